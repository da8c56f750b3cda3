//! Logging in with passthrough credentials: every upstream security ×
//! auth, every form of LOGIN and AUTHENTICATE PLAIN a client may use, and
//! the capabilities postern shows on both sides of login.

use postern_testkit::{login_base64, sasl_plain_response, ImapMoment};

use super::*;

/// What postern advertises before login on a plain listener with
/// passthrough credentials: its own mechanisms only (it checks PLAIN and
/// LOGIN itself, then logs in upstream however the route says), never
/// STARTTLS, LOGINDISABLED or the upstream's AUTH=, and LITERAL- (not
/// LITERAL+: it caps literals before login).
#[track_caller]
fn assert_before_login(caps: &[String], what: &str) {
    assert!(has(caps, "IMAP4rev1"), "{what}: {caps:?}");
    assert!(
        !has(caps, "STARTTLS") && !has(caps, "LOGINDISABLED"),
        "{what}: {caps:?}"
    );
    let mut mechanisms = auth_mechanisms(caps);
    mechanisms.sort();
    assert_eq!(mechanisms, ["LOGIN", "PLAIN"], "{what}: {caps:?}");
    assert!(has(caps, "SASL-IR"), "{what}: {caps:?}");
    assert!(
        has(caps, "LITERAL-") && !has(caps, "LITERAL+"),
        "{what}: {caps:?}"
    );
}

/// Every upstream security × auth with passthrough credentials. On each:
/// postern's greeting and CAPABILITY; a wrong password; LOGIN with quoted
/// strings (both escapes), synchronising literals and LITERAL- `{n+}`,
/// atoms; AUTHENTICATE PLAIN with and without SASL-IR. The fake checks
/// every login for real and records the mechanism postern used; after
/// login a message full of protocol lines comes back byte-identical and
/// the capabilities relayed are filtered.
#[tokio::test]
async fn every_security_and_auth_combination() {
    let pki = TestPki::new();
    for security in ["none", "tls", "starttls"] {
        for (auth, mechanism) in [
            ("login", "LOGIN"),
            ("plain", "AUTHENTICATE PLAIN"),
            ("cram-md5", "AUTHENTICATE CRAM-MD5"),
        ] {
            let what = format!("{security} × {auth}");
            let up = upstream(&pki, security, script(PASSWORD)).await;
            let atom = upstream(&pki, security, script(ATOM_PASSWORD)).await;
            let gw = start(
                &GatewayYaml::new()
                    .route(up.route("r", security, auth))
                    .route(atom.route("atom", security, auth))
                    .to_string(),
            )
            .await;
            // PLAIN goes with an initial response (the fake offers SASL-IR).
            let expected = |n: usize| {
                vec![
                    (
                        mechanism.to_owned(),
                        USER.to_owned(),
                        auth == "plain",
                        security != "none"
                    );
                    n
                ]
            };

            // Before login: postern speaks for itself.
            let (mut c, greeting) = connect(gw.addr("r")).await;
            assert_before_login(&greeting, &what);
            let r = c.imap_command("a0 CAPABILITY").await.expect("capability");
            assert_tagged(&r, "a0", "OK", &what);
            let caps = untagged_capabilities(&r);
            assert_eq!(caps.len(), 1, "{what}: {}", text(&r));
            assert_before_login(&caps[0], &what);
            assert_eq!(
                up.fake.connections(),
                0,
                "{what}: the upstream is opened only at login"
            );

            // A wrong password: the upstream's refusal, as a credential
            // refusal the client may retry.
            let r = c
                .imap_command(&format!("a1 LOGIN {USER} wrong"))
                .await
                .expect("login");
            assert_tagged(&r, "a1", "NO [AUTHENTICATIONFAILED]", &what);
            assert_eq!(logins(&up.fake), expected(0), "{what}");

            // Quoted strings with both escapes.
            let r = c
                .imap_command(&format!("a2 LOGIN {} {}", quoted(USER), quoted(PASSWORD)))
                .await
                .expect("login");
            let ok = assert_tagged(&r, "a2", "OK", &what);
            assert_eq!(logins(&up.fake), expected(1), "{what}");
            let caps =
                code_capabilities(&ok).unwrap_or_else(|| panic!("{what}: no [CAPABILITY] in {ok}"));
            assert_relayed_capabilities(&caps, &what);
            assert!(has(&caps, "IDLE"), "{what}: {caps:?}");
            let r = c.imap_command("a3 CAPABILITY").await.expect("capability");
            assert_tagged(&r, "a3", "OK", &what);
            let caps = untagged_capabilities(&r);
            assert_eq!(caps.len(), 1, "{what}: {}", text(&r));
            assert_relayed_capabilities(&caps[0], &what);
            assert!(has(&caps[0], "IDLE"), "{what}: {caps:?}");
            select_and_fetch(&mut c, 1, &trap_message(), &what).await;
            logout(&mut c, &what).await;

            // Synchronising literals: postern's `+` before each.
            let (mut c, _) = connect(gw.addr("r")).await;
            let r = c
                .imap_command(&format!("b LOGIN {{{}}}", USER.len()))
                .await
                .expect("login");
            assert!(text(&r).starts_with("+ "), "{what}: {}", text(&r));
            c.send(&format!("{USER} {{{}}}", PASSWORD.len()))
                .await
                .expect("user");
            let r = c.read_imap_response("b").await.expect("continuation");
            assert!(text(&r).starts_with("+ "), "{what}: {}", text(&r));
            c.send(PASSWORD).await.expect("password");
            let r = c.read_imap_response("b").await.expect("login");
            assert_tagged(&r, "b", "OK", &what);
            logout(&mut c, &what).await;

            // Non-synchronising literals, as LITERAL- allows (4096 octets
            // at most): no `+`, everything in one write.
            let (mut c, _) = connect(gw.addr("r")).await;
            c.send_raw(
                format!(
                    "c LOGIN {{{}+}}\r\n{USER} {{{}+}}\r\n{PASSWORD}\r\n",
                    USER.len(),
                    PASSWORD.len()
                )
                .as_bytes(),
            )
            .await
            .expect("login");
            let r = c.read_imap_response("c").await.expect("login");
            assert!(
                r.starts_with(b"c OK"),
                "{what}: no `+` for {{n+}}, then OK: {}",
                text(&r)
            );
            logout(&mut c, &what).await;

            // AUTHENTICATE PLAIN with an initial response (SASL-IR).
            let (mut c, _) = connect(gw.addr("r")).await;
            let r = c
                .imap_command(&format!(
                    "d AUTHENTICATE PLAIN {}",
                    sasl_plain_response("", USER, PASSWORD)
                ))
                .await
                .expect("authenticate");
            assert_tagged(&r, "d", "OK", &what);
            logout(&mut c, &what).await;

            // AUTHENTICATE PLAIN without: the empty challenge first.
            let (mut c, _) = connect(gw.addr("r")).await;
            let r = c
                .imap_command("e AUTHENTICATE PLAIN")
                .await
                .expect("authenticate");
            assert_eq!(text(&r), "+ \r\n", "{what}");
            c.send(&sasl_plain_response(USER, USER, PASSWORD))
                .await
                .expect("response");
            let r = c.read_imap_response("e").await.expect("authenticate");
            assert_tagged(&r, "e", "OK", &what);
            logout(&mut c, &what).await;

            // Atoms.
            let (mut c, _) = connect(gw.addr("atom")).await;
            let r = c
                .imap_command(&format!("f LOGIN {USER} {ATOM_PASSWORD}"))
                .await
                .expect("login");
            assert_tagged(&r, "f", "OK", &what);
            logout(&mut c, &what).await;

            assert_eq!(logins(&up.fake), expected(5), "{what}");
            assert_eq!(logins(&atom.fake), expected(1), "{what}");
            assert_eq!(violations(&up.fake), Vec::<String>::new(), "{what}");
            assert_eq!(violations(&atom.fake), Vec::<String>::new(), "{what}");
            gw.stop().await;
        }
    }
}

/// AUTHENTICATE LOGIN from the client, a cancelled exchange, an
/// authorization identity postern cannot honour, a mechanism it does not
/// check itself: only the first reaches the upstream.
#[tokio::test]
async fn authenticate_login_cancel_and_unsupported_forms() {
    let pki = TestPki::new();
    let up = upstream(&pki, "tls", script(PASSWORD)).await;
    let gw = gateway(&up, "tls", "cram-md5").await;
    let (mut c, _) = connect(gw.addr("r")).await;

    let r = c.imap_command("a AUTHENTICATE PLAIN").await.expect("auth");
    assert_eq!(text(&r), "+ \r\n");
    c.send("*").await.expect("cancel");
    let r = c.read_imap_response("a").await.expect("cancelled");
    assert_tagged(&r, "a", "BAD", "cancel");

    let r = c
        .imap_command(&format!(
            "b AUTHENTICATE PLAIN {}",
            sasl_plain_response("root", USER, PASSWORD)
        ))
        .await
        .expect("auth");
    assert_tagged(&r, "b", "NO [AUTHORIZATIONFAILED]", "authzid");

    for (tag, mechanism) in [("c", "CRAM-MD5"), ("d", "XOAUTH2")] {
        let r = c
            .imap_command(&format!("{tag} AUTHENTICATE {mechanism}"))
            .await
            .expect("auth");
        assert_tagged(&r, tag, "NO [CANNOT]", mechanism);
    }
    assert_eq!(up.fake.connections(), 0, "nothing went upstream yet");

    let r = c.imap_command("e AUTHENTICATE LOGIN").await.expect("auth");
    assert_eq!(text(&r), format!("+ {}\r\n", login_base64("Username:")));
    c.send(&login_base64(USER)).await.expect("user");
    let r = c.read_imap_response("e").await.expect("prompt");
    assert_eq!(text(&r), format!("+ {}\r\n", login_base64("Password:")));
    c.send(&login_base64(PASSWORD)).await.expect("password");
    let r = c.read_imap_response("e").await.expect("login");
    assert_tagged(&r, "e", "OK", "AUTHENTICATE LOGIN");
    assert_eq!(
        logins(&up.fake),
        [(
            "AUTHENTICATE CRAM-MD5".to_owned(),
            USER.to_owned(),
            false,
            true
        )]
    );
    select_and_fetch(&mut c, 1, &trap_message(), "AUTHENTICATE LOGIN").await;
    logout(&mut c, "AUTHENTICATE LOGIN").await;
    assert_eq!(violations(&up.fake), Vec::<String>::new());
    gw.stop().await;
}

/// Before any login postern knows nothing of the upstream and offers
/// IMAP4rev1 alone; once a session has seen the upstream, IMAP4rev2 is
/// offered if the upstream offers it. postern's own commands (NOOP, ID,
/// LOGOUT) before login never open the upstream.
#[tokio::test]
async fn capabilities_before_login_follow_the_upstream_and_local_commands() {
    let pki = TestPki::new();
    let up = upstream(&pki, "starttls", script(PASSWORD).capability("IMAP4rev2")).await;
    let gw = gateway(&up, "starttls", "login").await;

    let (mut c, caps) = connect(gw.addr("r")).await;
    assert!(!has(&caps, "IMAP4rev2"), "{caps:?}");
    let r = c.imap_command("a NOOP").await.expect("noop");
    assert_eq!(text(&r), "a OK NOOP completed\r\n");
    let r = c.imap_command("b ID NIL").await.expect("id");
    assert_tagged(&r, "b", "OK", "ID");
    assert!(
        text(&r).starts_with("* ID (\"name\" \"postern\")"),
        "{}",
        text(&r)
    );
    let r = c.imap_command("c LOGOUT").await.expect("logout");
    assert_eq!(
        text(&r),
        "* BYE postern IMAP gateway logging out\r\nc OK LOGOUT completed\r\n"
    );
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert_eq!(up.fake.connections(), 0);

    let (mut c, _) = connect(gw.addr("r")).await;
    login(&mut c, USER, PASSWORD, "first login").await;
    logout(&mut c, "first login").await;

    let (_c, caps) = connect(gw.addr("r")).await;
    assert!(has(&caps, "IMAP4rev2"), "{caps:?}");
    assert_before_login(&caps, "after a login");
    gw.stop().await;
}

/// A login OK without a `[CAPABILITY]` code: the client's capabilities
/// after login come filtered from the upstream's CAPABILITY.
#[tokio::test]
async fn a_login_ok_without_capabilities() {
    let pki = TestPki::new();
    for security in ["none", "tls", "starttls"] {
        let what = format!("no [CAPABILITY] in the login OK, {security}");
        let up = upstream(
            &pki,
            security,
            script(PASSWORD).capability_in_login_ok(false),
        )
        .await;
        let gw = gateway(&up, security, "plain").await;
        let (mut c, _) = connect(gw.addr("r")).await;
        let ok = login(&mut c, USER, PASSWORD, &what).await;
        if let Some(caps) = code_capabilities(&ok) {
            assert_relayed_capabilities(&caps, &what);
        }
        let r = c.imap_command("k CAPABILITY").await.expect("capability");
        let caps = untagged_capabilities(&r);
        assert_eq!(caps.len(), 1, "{what}: {}", text(&r));
        assert_relayed_capabilities(&caps[0], &what);
        logout(&mut c, &what).await;
        gw.stop().await;
    }
}

/// A refused login keeps the upstream connection for the next attempt;
/// LOGOUT then logs that connection out too.
#[tokio::test]
async fn logout_after_a_refused_login_logs_the_upstream_out() {
    let pki = TestPki::new();
    let up = upstream(&pki, "tls", script(PASSWORD)).await;
    let gw = gateway(&up, "tls", "cram-md5").await;
    let (mut c, _) = connect(gw.addr("r")).await;
    for tag in ["a", "b"] {
        let r = c
            .imap_command(&format!("{tag} LOGIN {USER} wrong"))
            .await
            .expect("login");
        assert_tagged(&r, tag, "NO [AUTHENTICATIONFAILED]", "wrong password");
    }
    assert_eq!(up.fake.connections(), 1, "one upstream connection for both");
    let r = c.imap_command("z LOGOUT").await.expect("logout");
    assert_eq!(
        text(&r),
        "* BYE postern IMAP gateway logging out\r\nz OK LOGOUT completed\r\n"
    );
    let (rest, _) = c.read_to_close().await;
    assert!(rest.is_empty());
    assert!(up.fake.wait_closed(1, WAIT).await);
    let events = up.fake.events();
    assert!(events.contains(&ImapEvent::Logout), "{events:?}");
    assert!(
        !events.contains(&ImapEvent::ClosedWithoutQuit),
        "{events:?}"
    );
    gw.stop().await;
}

/// RFC 9051 §7: a server may send untagged data at any time. A stray
/// `* OK` right after the greeting, or before the tagged answer to the
/// login, is collected with the response it precedes: the login goes on
/// (POP3 and SMTP, whose servers only answer, refuse such a line instead).
#[tokio::test]
async fn untagged_lines_before_a_completion_do_not_break_the_login() {
    let pki = TestPki::new();
    for (security, moment) in [
        ("tls", ImapMoment::AfterGreeting),
        ("starttls", ImapMoment::AfterGreeting),
        ("none", ImapMoment::BeforeTagged("LOGIN".to_owned())),
        ("tls", ImapMoment::BeforeTagged("CAPABILITY".to_owned())),
    ] {
        let what = format!("a stray untagged OK {moment:?} on {security}");
        let up = upstream(&pki, security, script(PASSWORD).stray_ok(moment)).await;
        let gw = gateway(&up, security, "login").await;
        let (mut c, _) = connect(gw.addr("r")).await;
        login(&mut c, USER, PASSWORD, &what).await;
        logout(&mut c, &what).await;
        gw.stop().await;
    }
}
