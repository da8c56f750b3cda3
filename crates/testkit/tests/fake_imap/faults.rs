//! Scripted faults: a FETCH cut mid-literal, an unsolicited CAPABILITY
//! after login, stray untagged lines; and literal protocol errors.

use super::*;

#[tokio::test]
async fn die_mid_fetch_literal() {
    let fake = FakeImap::start(script().die_mid_fetch(10)).await;
    let (mut c, _) = connect(&fake).await;
    login(&mut c).await;
    cmd(&mut c, "a SELECT INBOX").await;
    // FLAGS alone has no literal: answered in full.
    assert_eq!(
        cmd(&mut c, "b FETCH 1:2 FLAGS").await,
        "* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\nb OK FETCH completed\r\n"
    );
    c.send("c FETCH 1:2 (FLAGS RFC822)").await.unwrap();
    let (got, _) = c.read_to_close().await;
    let mut want = format!("* 1 FETCH (FLAGS () RFC822 {{{}}}\r\n", MSG1.len()).into_bytes();
    want.extend_from_slice(&MSG1[..10]);
    assert_eq!(text(&got), text(&want));
    assert!(fake.wait_closed(1, WAIT).await);
    let events = fake.events();
    assert!(events.contains(&ImapEvent::DroppedByScript(
        "FETCH cut 10 bytes into a body literal".into()
    )));
    assert_eq!(
        &events[events.len() - 2..],
        [ImapEvent::ClosedWithoutQuit, ImapEvent::Closed]
    );
}

#[tokio::test]
async fn unsolicited_capability_after_login() {
    let fake = FakeImap::start(script().unsolicited_capability_after_login()).await;
    let (mut c, _) = connect(&fake).await;
    let response = cmd(&mut c, &format!("a LOGIN alice {QUOTED_PASSWORD}")).await;
    assert!(tagged(&response).starts_with("a OK "), "{response}");
    assert_eq!(c.read_line().await.unwrap(), INJECTED_CAPABILITY);
    // Only once, and not after a failed login.
    assert_eq!(cmd(&mut c, "b NOOP").await, "b OK NOOP completed\r\n");
    logout(&fake, &mut c).await;

    let (mut c, _) = connect(&fake).await;
    assert!(cmd(&mut c, "a LOGIN alice x").await.starts_with("a NO "));
    assert_eq!(cmd(&mut c, "b NOOP").await, "b OK NOOP completed\r\n");
    logout(&fake, &mut c).await;
}

#[tokio::test]
async fn stray_untagged_lines_at_chosen_moments() {
    let fake = FakeImap::start(
        script()
            .stray_ok(ImapMoment::AfterGreeting)
            .stray_ok(ImapMoment::BeforeTagged("login".into()))
            .stray_ok(ImapMoment::Idling)
            .untagged(ImapMoment::BeforeTagged("UID FETCH".into()), "* 9 RECENT"),
    )
    .await;
    let (mut c, greeting) = connect(&fake).await;
    assert!(greeting.starts_with("* OK [CAPABILITY "));
    assert_eq!(c.read_line().await.unwrap(), STRAY_OK);
    assert_eq!(cmd(&mut c, "a NOOP").await, "a OK NOOP completed\r\n");
    let response = cmd(&mut c, &format!("b LOGIN alice {QUOTED_PASSWORD}")).await;
    assert!(
        response.starts_with(&format!("{STRAY_OK}\r\nb OK ")),
        "{response}"
    );
    cmd(&mut c, "c SELECT INBOX").await;
    assert_eq!(
        cmd(&mut c, "d UID FETCH 1 FLAGS").await,
        "* 1 FETCH (UID 1 FLAGS ())\r\n* 9 RECENT\r\nd OK UID FETCH completed\r\n"
    );
    assert_eq!(c.command("e IDLE").await.unwrap(), "+ idling");
    assert_eq!(c.read_line().await.unwrap(), STRAY_OK);
    c.send("DONE").await.unwrap();
    assert_eq!(
        text(&c.read_imap_response("e").await.unwrap()),
        "e OK IDLE terminated\r\n"
    );
    logout(&fake, &mut c).await;
    no_violations(&fake);
}

#[tokio::test]
async fn literal_protocol_errors() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    // Too big before login: refused instead of the continuation.
    assert_eq!(
        c.command("a LOGIN {100000}").await.unwrap(),
        "a NO [TOOBIG] Literal too large"
    );
    // The literal sent without waiting for "+".
    c.send_raw(b"b LOGIN {5}\r\nalice").await.unwrap();
    assert_eq!(c.read_line().await.unwrap(), "+ Ready for literal data");
    assert_eq!(
        reply(&mut c, "b", &format!(" {QUOTED_PASSWORD}")).await,
        "b OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE] Logged in\r\n"
    );
    logout(&fake, &mut c).await;
    let v = violations(&fake);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(v[0], "literal of 100000 octets announced (65536 at most)");
    assert!(
        v[1].contains(
            "sent after a synchronising literal's announcement before the + continuation"
        ),
        "{v:?}"
    );

    // An oversized non-synchronising literal cannot be refused: BYE.
    let (mut c, _) = connect(&fake).await;
    c.send("c LOGIN {100000+}").await.unwrap();
    let (rest, _) = c.read_to_close().await;
    assert_eq!(text(&rest), "* BYE Literal too large\r\n");
    assert!(fake.wait_closed(2, WAIT).await);
    assert_eq!(
        violations(&fake)[2],
        "non-synchronising literal of 100000 octets (65536 at most)"
    );
}
