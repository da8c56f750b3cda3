//! LOGIN (atoms, quoted strings, literals) and AUTHENTICATE PLAIN, LOGIN
//! and CRAM-MD5 with and without SASL-IR; greetings.

use super::*;

#[tokio::test]
async fn greeting_lists_capabilities_and_login_works() {
    let fake = FakeImap::start(script()).await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(
        greeting,
        "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5] \
         fake IMAP ready"
    );
    assert_eq!(
        capabilities(&mut c).await,
        caps_in(&greeting),
        "CAPABILITY says what the greeting said"
    );
    // Before login only the not-authenticated commands work.
    assert_eq!(
        cmd(&mut c, "a SELECT INBOX").await,
        "a BAD Log in first\r\n"
    );
    assert_eq!(cmd(&mut c, "b NOOP").await, "b OK NOOP completed\r\n");
    let response = cmd(&mut c, &format!("c LOGIN alice {QUOTED_PASSWORD}")).await;
    assert_eq!(
        response,
        "c OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE] Logged in\r\n"
    );
    assert_eq!(
        cmd(&mut c, "d LOGIN alice x").await,
        "d BAD Not allowed in the authenticated state\r\n"
    );
    logout(&fake, &mut c).await;

    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "LOGIN".into(),
            user: "alice".into(),
            initial_response: false,
            tls: false
        }]
    );
    assert_eq!(
        fake.commands(),
        ["CAPABILITY", "SELECT", "NOOP", "LOGIN", "LOGIN", "LOGOUT"]
    );
    let log = fake.logged_events();
    assert_sessions_framed(
        log.iter().map(|e| (e.session, &e.event)),
        1,
        &ImapEvent::Connected,
        &ImapEvent::Closed,
    );
    assert!(!fake.events().contains(&ImapEvent::ClosedWithoutQuit));
    assert!(fake.events().contains(&ImapEvent::Logout));
    assert!(!format!("{log:?}").contains("word"), "password logged");
    no_violations(&fake);
}

#[tokio::test]
async fn login_with_literals_both_kinds() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    // Synchronising: each literal waits for "+".
    c.send("a LOGIN {5}").await.unwrap();
    assert_eq!(c.read_line().await.unwrap(), "+ Ready for literal data");
    c.send_raw(format!("alice {{{}}}\r\n", PASSWORD.len()).as_bytes())
        .await
        .unwrap();
    assert!(c.read_line().await.unwrap().starts_with("+ "));
    c.send(PASSWORD).await.unwrap();
    let response = text(&c.read_imap_response("a").await.unwrap());
    assert!(tagged(&response).starts_with("a OK "), "{response}");
    logout(&fake, &mut c).await;

    // LITERAL+: all in one write, no continuation.
    let (mut c, _) = connect(&fake).await;
    let line = format!(
        "b LOGIN {{5+}}\r\nalice {{{}+}}\r\n{PASSWORD}\r\n",
        PASSWORD.len()
    );
    c.send_raw(line.as_bytes()).await.unwrap();
    let response = text(&c.read_imap_response("b").await.unwrap());
    assert!(response.starts_with("b OK "), "{response}");
    logout(&fake, &mut c).await;
    assert_eq!(logged_in(&fake).len(), 2);
    no_violations(&fake);
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    for line in [
        "a LOGIN alice wonderland",
        "b LOGIN bob \"pass \\\"word\\\"\"",
        "c LOGIN alice \"pass word\"",
    ] {
        let response = cmd(&mut c, line).await;
        assert!(
            response.ends_with(" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
            "{response}"
        );
    }
    assert_eq!(
        cmd(&mut c, "d LOGIN alice").await,
        "d BAD LOGIN needs a user name and a password\r\n"
    );
    assert_eq!(
        cmd(&mut c, "e FETCH 1 FLAGS").await,
        "e BAD Log in first\r\n"
    );
    logout(&fake, &mut c).await;
    let failed = fake
        .events()
        .into_iter()
        .filter(|e| {
            *e == ImapEvent::AuthFailed {
                mechanism: "LOGIN".into(),
            }
        })
        .count();
    assert_eq!(failed, 3);
    assert!(logged_in(&fake).is_empty());
}

#[tokio::test]
async fn authenticate_plain_with_and_without_initial_response() {
    let fake = FakeImap::start(script()).await;
    let right = sasl_plain_response("", "alice", PASSWORD);

    let (mut c, _) = connect(&fake).await;
    let response = cmd(&mut c, &format!("a AUTHENTICATE PLAIN {right}")).await;
    assert!(response.starts_with("a OK [CAPABILITY "), "{response}");
    logout(&fake, &mut c).await;

    let (mut c, _) = connect(&fake).await;
    assert_eq!(c.command("b AUTHENTICATE plain").await.unwrap(), "+ ");
    let wrong = sasl_plain_response("", "alice", "wrong");
    assert_eq!(
        reply(&mut c, "b", &wrong).await,
        "b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    );
    // "=" is an empty initial response: no NULs, refused.
    assert!(cmd(&mut c, "c AUTHENTICATE PLAIN =")
        .await
        .starts_with("c NO "));
    assert_eq!(c.command("d AUTHENTICATE PLAIN").await.unwrap(), "+ ");
    assert_eq!(
        reply(&mut c, "d", "not base64!").await,
        "d BAD Invalid base64 in SASL response\r\n"
    );
    assert_eq!(c.command("e AUTHENTICATE PLAIN").await.unwrap(), "+ ");
    assert_eq!(
        reply(&mut c, "e", "*").await,
        "e BAD Authentication cancelled\r\n"
    );
    assert_eq!(c.command("f AUTHENTICATE PLAIN").await.unwrap(), "+ ");
    let with_authzid = sasl_plain_response("alice", "alice", PASSWORD);
    assert!(reply(&mut c, "f", &with_authzid).await.starts_with("f OK "));
    logout(&fake, &mut c).await;

    let plain = |initial_response| ImapEvent::LoggedIn {
        mechanism: "AUTHENTICATE PLAIN".into(),
        user: "alice".into(),
        initial_response,
        tls: false,
    };
    assert_eq!(logged_in(&fake), [plain(true), plain(false)]);
    let events = fake.events();
    let failed = ImapEvent::AuthFailed {
        mechanism: "AUTHENTICATE PLAIN".into(),
    };
    assert_eq!(events.iter().filter(|e| **e == failed).count(), 3);
    assert!(events.contains(&ImapEvent::AuthCancelled {
        mechanism: "AUTHENTICATE PLAIN".into()
    }));
    assert!(fake
        .commands()
        .iter()
        .all(|c| c == "AUTHENTICATE" || c == "LOGOUT"));
    no_violations(&fake);
}

#[tokio::test]
async fn authenticate_login_mechanism() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    let prompt = c.command("a AUTHENTICATE LOGIN").await.unwrap();
    assert_eq!(challenge_of(&prompt), "Username:");
    let prompt = c.command(&login_base64("alice")).await.unwrap();
    assert_eq!(challenge_of(&prompt), "Password:");
    assert!(reply(&mut c, "a", &login_base64(PASSWORD))
        .await
        .starts_with("a OK "));
    logout(&fake, &mut c).await;

    // SASL-IR carries the user name; the password is still prompted for.
    let (mut c, _) = connect(&fake).await;
    let ir = login_base64("alice");
    let prompt = c
        .command(&format!("b AUTHENTICATE LOGIN {ir}"))
        .await
        .unwrap();
    assert_eq!(challenge_of(&prompt), "Password:");
    assert!(reply(&mut c, "b", &login_base64("nope"))
        .await
        .starts_with("b NO [AUTHENTICATIONFAILED]"));
    c.command("c AUTHENTICATE LOGIN").await.unwrap();
    assert_eq!(
        reply(&mut c, "c", "*").await,
        "c BAD Authentication cancelled\r\n"
    );
    logout(&fake, &mut c).await;

    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "AUTHENTICATE LOGIN".into(),
            user: "alice".into(),
            initial_response: false,
            tls: false
        }]
    );
    no_violations(&fake);
}

#[tokio::test]
async fn authenticate_cram_md5() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    let challenge = challenge_of(&c.command("a AUTHENTICATE CRAM-MD5").await.unwrap());
    assert!(challenge.starts_with('<') && challenge.ends_with("@fake.test>"));
    let wrong = cram_md5_response("alice", "wrong", &challenge);
    assert!(reply(&mut c, "a", &wrong)
        .await
        .starts_with("a NO [AUTHENTICATIONFAILED]"));
    // A fresh challenge each time: replaying the old right answer fails.
    let again = challenge_of(&c.command("b AUTHENTICATE CRAM-MD5").await.unwrap());
    assert_ne!(again, challenge);
    let stale = cram_md5_response("alice", PASSWORD, &challenge);
    assert!(reply(&mut c, "b", &stale).await.starts_with("b NO "));
    let challenge = challenge_of(&c.command("c AUTHENTICATE CRAM-MD5").await.unwrap());
    let right = cram_md5_response("alice", PASSWORD, &challenge);
    assert!(reply(&mut c, "c", &right).await.starts_with("c OK "));
    logout(&fake, &mut c).await;
    assert_eq!(
        logged_in(&fake),
        [ImapEvent::LoggedIn {
            mechanism: "AUTHENTICATE CRAM-MD5".into(),
            user: "alice".into(),
            initial_response: false,
            tls: false
        }]
    );
    no_violations(&fake);

    // The server speaks first: an initial response is a client bug.
    let (mut c, _) = connect(&fake).await;
    assert_eq!(
        cmd(&mut c, "d AUTHENTICATE CRAM-MD5 Zm9v").await,
        "d BAD CRAM-MD5 takes no initial response\r\n"
    );
    assert_eq!(violations(&fake), ["CRAM-MD5 with an initial response"]);
}

#[tokio::test]
async fn mechanisms_sasl_ir_and_login_ok_capabilities_follow_the_script() {
    let fake = FakeImap::start(
        script()
            .mechanisms(&["CRAM-MD5"])
            .sasl_ir(false)
            .literal_plus(false)
            .capabilities(&["IMAP4rev2", "COMPRESS=DEFLATE"])
            .capability_in_login_ok(false),
    )
    .await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(
        caps_in(&greeting),
        [
            "IMAP4rev1",
            "IMAP4rev2",
            "COMPRESS=DEFLATE",
            "AUTH=CRAM-MD5"
        ]
    );
    assert_eq!(
        cmd(&mut c, "a AUTHENTICATE PLAIN").await,
        "a NO Unsupported authentication mechanism\r\n"
    );
    // No SASL-IR: an initial response is refused, and a violation.
    assert_eq!(
        cmd(&mut c, "b AUTHENTICATE CRAM-MD5 =").await,
        "b BAD SASL-IR not supported\r\n"
    );
    // The LOGIN command does not depend on the mechanism list.
    assert_eq!(
        cmd(&mut c, &format!("c LOGIN alice {QUOTED_PASSWORD}")).await,
        "c OK Logged in\r\n"
    );
    assert_eq!(
        capabilities(&mut c).await,
        ["IMAP4rev1", "IMAP4rev2", "COMPRESS=DEFLATE"]
    );
    assert_eq!(
        cmd(&mut c, "d COMPRESS DEFLATE").await,
        "d NO [CANNOT] COMPRESS is not supported by this fake\r\n"
    );
    assert_eq!(cmd(&mut c, "e IDLE").await, "e BAD Unknown command\r\n");
    logout(&fake, &mut c).await;
    assert_eq!(
        violations(&fake),
        ["AUTHENTICATE with an initial response, but SASL-IR not advertised"]
    );
}

#[tokio::test]
async fn post_login_capabilities_replace_the_list() {
    let fake = FakeImap::start(script().post_login_capabilities(&[
        "IMAP4rev1",
        "STARTTLS",
        "AUTH=PLAIN",
        "IDLE",
    ]))
    .await;
    let (mut c, greeting) = connect(&fake).await;
    assert!(caps_in(&greeting).contains(&"AUTH=LOGIN".to_owned()));
    let response = cmd(&mut c, &format!("a LOGIN alice {QUOTED_PASSWORD}")).await;
    assert_eq!(
        caps_in(&response),
        ["IMAP4rev1", "STARTTLS", "AUTH=PLAIN", "IDLE"]
    );
    assert_eq!(
        capabilities(&mut c).await,
        ["IMAP4rev1", "STARTTLS", "AUTH=PLAIN", "IDLE"]
    );
    logout(&fake, &mut c).await;
}

#[tokio::test]
async fn plain_and_bye_greetings() {
    let fake = FakeImap::start(script().greeting(ImapGreeting::Plain)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "* OK fake IMAP ready");
    login(&mut c).await;
    logout(&fake, &mut c).await;

    let fake = FakeImap::start(script().greeting(ImapGreeting::Bye)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(greeting, "* BYE fake IMAP server unavailable");
    let (rest, end) = c.read_to_close().await;
    assert!(rest.is_empty());
    end.unwrap();
    assert!(fake.wait_closed(1, WAIT).await);
    assert_eq!(
        fake.events(),
        [
            ImapEvent::Connected,
            ImapEvent::ClosedWithoutQuit,
            ImapEvent::Closed
        ]
    );
}

#[tokio::test]
async fn preauth_greeting_starts_authenticated() {
    let pki = TestPki::new();
    let fake = FakeImap::start(
        script()
            .greeting(ImapGreeting::Preauth)
            .security(FakeSecurity::Starttls(pki.server_config())),
    )
    .await;
    let (mut c, greeting) = connect(&fake).await;
    assert_eq!(
        greeting,
        "* PREAUTH [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE] fake IMAP ready, \
         logged in as alice"
    );
    // The downgrade: no STARTTLS once authenticated, and no login needed.
    assert!(!capabilities(&mut c).await.contains(&"STARTTLS".to_owned()));
    assert_eq!(
        cmd(&mut c, "a STARTTLS").await,
        "a BAD Not allowed in the authenticated state\r\n"
    );
    assert!(tagged(&cmd(&mut c, "b SELECT INBOX").await).starts_with("b OK [READ-WRITE]"));
    logout(&fake, &mut c).await;
    assert!(logged_in(&fake).is_empty(), "nobody logged in");
    assert!(!fake.events().contains(&ImapEvent::TlsEstablished));
}
