//! The fake IdP wired to its TLS and to the fake upstreams: the test CA,
//! an unknown CA, malformed HTTP, and a device-code login whose token the
//! fake POP3 and SMTP servers accept through `verifier()`.

use postern_testkit::{
    xoauth2_response, BearerOutcome, FakePop3, FakeSmtp, LineClient, Pop3Event, Pop3Script,
    SmtpEvent, SmtpScript,
};

use super::*;

#[tokio::test]
async fn urls_and_tls() {
    let (idp, https, pki) = start(IdpScript::new()).await;
    let port = idp.addr().port();
    assert_eq!(idp.base_url(), format!("https://127.0.0.1:{port}"));
    assert_eq!(idp.token_url(), format!("https://127.0.0.1:{port}/token"));
    assert_eq!(
        idp.device_authorization_url(),
        format!("https://127.0.0.1:{port}/devicecode")
    );
    assert_eq!(
        idp.introspection_url(),
        format!("https://127.0.0.1:{port}/introspect")
    );
    // The leaf is also valid for localhost.
    let by_name = Https {
        name: "localhost".to_owned(),
        ..Https::new(&idp, &pki)
    };
    assert_eq!(
        by_name
            .request("GET", "/device", &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    drop(https);

    // A client that does not trust the test CA fails, and the fake saw why.
    let stranger = TestPki::new();
    let untrusting = Https::new(&idp, &stranger);
    let err = untrusting
        .request("GET", "/device", &[], "")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    idp.expect_event("TlsFailed", |e| matches!(e, IdpEvent::TlsFailed(_)), WAIT)
        .await;

    let localhost = start(IdpScript::new().url_host("localhost")).await.0;
    assert!(localhost.token_url().starts_with("https://localhost:"));
}

#[tokio::test]
async fn malformed_http_is_a_violation() {
    let (idp, https, pki) = start(IdpScript::new()).await;
    let tcp = TcpStream::connect(idp.addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = TlsConnector::from(pki.client_config())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"NOT HTTP AT ALL\x01\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    idp.expect_event(
        "HTTP violation",
        |e| matches!(e, IdpEvent::ClientViolation(v) if v.starts_with("HTTP:")),
        WAIT,
    )
    .await;
    // The fake still serves others.
    assert_eq!(
        https
            .request("GET", "/device", &[], "")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn device_login_token_opens_the_fake_upstreams() {
    let user = "alice@example.test";
    let (idp, https, _pki) = start(
        IdpScript::new()
            .interval(0)
            .approve_device_as(user)
            .access_token_lifetime(Duration::from_secs(2)),
    )
    .await;
    let dc = device_code(&https, "offline_access").await;
    let tokens = poll(&https, dc["device_code"].as_str().unwrap())
        .await
        .json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();

    let pop3 = FakePop3::start(
        Pop3Script::new()
            .credentials(user, "unused")
            .sasl(&["XOAUTH2"])
            .bearer(idp.verifier()),
    )
    .await;
    let smtp = FakeSmtp::start(
        SmtpScript::new()
            .credentials(user, "unused")
            .auth_mechanisms(&["XOAUTH2"])
            .bearer(idp.verifier()),
    )
    .await;

    let mut c = LineClient::connect(pop3.addr()).await.unwrap();
    c.read_line().await.unwrap();
    assert_eq!(c.command("AUTH XOAUTH2").await.unwrap(), "+ ");
    assert!(c
        .command(&xoauth2_response(user, &access))
        .await
        .unwrap()
        .starts_with("+OK"));
    assert!(pop3.events().contains(&Pop3Event::LoggedIn {
        method: "XOAUTH2".into(),
        tls: false
    }));

    // Two seconds later the token has expired: the upstreams refuse it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut s = LineClient::connect(smtp.addr()).await.unwrap();
    s.read_smtp_reply().await.unwrap();
    s.smtp_command("EHLO client.test").await.unwrap();
    assert_eq!(s.command("AUTH XOAUTH2").await.unwrap(), "334 ");
    let challenge = s.command(&xoauth2_response(user, &access)).await.unwrap();
    assert!(challenge.starts_with("334 ey"), "{challenge}");
    assert_eq!(
        s.command("").await.unwrap(),
        "535 5.7.8 Authentication unsuccessful"
    );
    // A refreshed token works.
    let json = refresh(&https, tokens["refresh_token"].as_str().unwrap())
        .await
        .json();
    s.command("AUTH XOAUTH2").await.unwrap();
    assert!(s
        .command(&xoauth2_response(
            user,
            json["access_token"].as_str().unwrap()
        ))
        .await
        .unwrap()
        .starts_with("235 "));
    let outcomes: Vec<BearerOutcome> = smtp
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SmtpEvent::BearerAuth(a) => Some(a.outcome),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&outcomes[..], [BearerOutcome::Refused(w), BearerOutcome::Accepted] if w.contains("not valid"))
    );
}
