//! After login: LIST, SELECT/EXAMINE, FETCH literal framing, STORE,
//! SEARCH, EXPUNGE, APPEND (both literal kinds, megabytes), STATUS,
//! CREATE, IDLE and NOOP updates across sessions, and syntax errors.

use super::*;

const MSG3: &[u8] = b"Subject: three\r\n\r\ndelivered\r\n";

async fn logged_in_client(fake: &FakeImap) -> LineClient {
    let (mut c, _) = connect(fake).await;
    login(&mut c).await;
    c
}

#[tokio::test]
async fn list_select_and_fetch_literals() {
    let fake = FakeImap::start(script()).await;
    let mut c = logged_in_client(&fake).await;
    assert_eq!(
        cmd(&mut c, "a LIST \"\" *").await,
        "* LIST (\\HasNoChildren) \"/\" INBOX\r\n\
         * LIST (\\HasNoChildren) \"/\" \"Sent Items\"\r\n\
         a OK LIST completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "b LIST \"\" \"\"").await,
        "* LIST (\\Noselect) \"/\" \"\"\r\nb OK LIST completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "c LSUB \"\" Sent*").await,
        "* LSUB (\\HasNoChildren) \"/\" \"Sent Items\"\r\nc OK LSUB completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "d SELECT inbox").await,
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
         * 2 EXISTS\r\n\
         * 0 RECENT\r\n\
         * OK [UNSEEN 1] First unseen\r\n\
         * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Limited\r\n\
         * OK [UIDVALIDITY 1000] UIDs valid\r\n\
         * OK [UIDNEXT 3] Predicted next UID\r\n\
         d OK [READ-WRITE] SELECT completed\r\n"
    );

    // The body is a real literal, byte-exact, with lines that look like
    // responses inside; RFC822 sets \Seen and says so.
    let raw = c.imap_command("e FETCH 1 (RFC822)").await.unwrap();
    let mut want = format!("* 1 FETCH (RFC822 {{{}}}\r\n", MSG1.len()).into_bytes();
    want.extend_from_slice(MSG1);
    want.extend_from_slice(b" FLAGS (\\Seen))\r\ne OK FETCH completed\r\n");
    assert_eq!(text(&raw), text(&want));
    assert_eq!(fake.messages("INBOX")[0].flags, ["\\Seen"]);

    // PEEK leaves \Seen alone; HEADER and partial TEXT cut the body.
    assert_eq!(
        cmd(&mut c, "f FETCH 2 (BODY.PEEK[HEADER] FLAGS)").await,
        "* 2 FETCH (BODY[HEADER] {16}\r\nSubject: two\r\n\r\n FLAGS ())\r\nf OK FETCH completed\r\n"
    );
    assert!(fake.messages("INBOX")[1].flags.is_empty());
    assert_eq!(
        cmd(&mut c, "g FETCH 2 BODY[TEXT]<2.5>").await,
        "* 2 FETCH (BODY[TEXT]<2> {5}\r\nne 1\r FLAGS (\\Seen))\r\ng OK FETCH completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "h UID FETCH 2:* (FLAGS RFC822.SIZE)").await,
        format!(
            "* 2 FETCH (UID 2 FLAGS (\\Seen) RFC822.SIZE {})\r\nh OK UID FETCH completed\r\n",
            MSG2.len()
        )
    );
    assert_eq!(
        cmd(&mut c, "i FETCH 1:* FAST").await,
        format!(
            "* 1 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE {})\r\n\
             * 2 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE {})\r\n\
             i OK FETCH completed\r\n",
            MSG1.len(),
            MSG2.len()
        )
    );
    assert_eq!(
        cmd(&mut c, "j FETCH 3 FLAGS").await,
        "j BAD Invalid message sequence number\r\n"
    );
    assert_eq!(
        cmd(&mut c, "k UID FETCH 7 FLAGS").await,
        "k OK UID FETCH completed\r\n"
    );
    assert!(cmd(&mut c, "l FETCH 1 ENVELOPE")
        .await
        .starts_with("l BAD "));

    // EXAMINE is read-only: no \Seen from BODY[], no STORE, no EXPUNGE.
    assert_eq!(fake.deliver("INBOX", MSG3), Some(3));
    let response = cmd(&mut c, "m EXAMINE INBOX").await;
    assert!(response.contains("* 3 EXISTS\r\n"), "{response}");
    assert!(response.contains("* OK [UNSEEN 3] "), "{response}");
    assert!(response.contains("[PERMANENTFLAGS ()]"), "{response}");
    assert!(
        tagged(&response).starts_with("m OK [READ-ONLY]"),
        "{response}"
    );
    let response = cmd(&mut c, "n FETCH 3 BODY[]").await;
    assert!(!response.contains("FLAGS"), "{response}");
    assert!(fake.messages("INBOX")[2].flags.is_empty());
    assert_eq!(
        cmd(&mut c, "o STORE 3 +FLAGS (\\Seen)").await,
        "o NO [READ-ONLY] Mailbox is read-only\r\n"
    );
    assert_eq!(
        cmd(&mut c, "p EXPUNGE").await,
        "p NO [READ-ONLY] Mailbox is read-only\r\n"
    );

    // A failed SELECT leaves nothing selected.
    assert_eq!(
        cmd(&mut c, "q SELECT Nope").await,
        "q NO [NONEXISTENT] No such mailbox\r\n"
    );
    assert_eq!(
        cmd(&mut c, "r FETCH 1 FLAGS").await,
        "r BAD No mailbox selected\r\n"
    );
    logout(&fake, &mut c).await;

    let selected: Vec<ImapEvent> = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, ImapEvent::Selected { .. }))
        .collect();
    assert_eq!(
        selected,
        [
            ImapEvent::Selected {
                mailbox: "INBOX".into(),
                read_only: false
            },
            ImapEvent::Selected {
                mailbox: "INBOX".into(),
                read_only: true
            }
        ]
    );
    no_violations(&fake);
}

#[tokio::test]
async fn store_search_expunge() {
    let fake = FakeImap::start(script()).await;
    let mut c = logged_in_client(&fake).await;
    cmd(&mut c, "a SELECT INBOX").await;
    assert_eq!(
        cmd(&mut c, "b STORE 1 +FLAGS (\\Deleted)").await,
        "* 1 FETCH (FLAGS (\\Deleted))\r\nb OK STORE completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "c UID STORE 2 +FLAGS.SILENT (\\Flagged $Label)").await,
        "c OK UID STORE completed\r\n"
    );
    for (line, want) in [
        ("d SEARCH DELETED", "* SEARCH 1"),
        ("e UID SEARCH UNDELETED FLAGGED", "* SEARCH 2"),
        ("f SEARCH ALL", "* SEARCH 1 2"),
        ("g SEARCH 2:*", "* SEARCH 2"),
        ("h SEARCH CHARSET UTF-8 UNSEEN", "* SEARCH 1 2"),
        ("i SEARCH SEEN", "* SEARCH"),
        ("j UID SEARCH UID 1:*", "* SEARCH 1 2"),
    ] {
        let response = cmd(&mut c, line).await;
        assert!(
            response.starts_with(&format!("{want}\r\n")),
            "{line}: {response}"
        );
        assert!(tagged(&response).contains(" OK "), "{line}: {response}");
    }
    assert!(cmd(&mut c, "k SEARCH FROM x").await.starts_with("k BAD "));
    assert_eq!(
        cmd(&mut c, "l UID STORE 2 -FLAGS (\\Flagged)").await,
        "* 2 FETCH (UID 2 FLAGS ($Label))\r\nl OK UID STORE completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "m STORE 1 FLAGS \\Seen \\Deleted").await,
        "* 1 FETCH (FLAGS (\\Seen \\Deleted))\r\nm OK STORE completed\r\n"
    );
    assert!(cmd(&mut c, "n STORE 1 =FLAGS (\\Seen)")
        .await
        .starts_with("n BAD "));
    assert_eq!(
        cmd(&mut c, "o EXPUNGE").await,
        "* 1 EXPUNGE\r\no OK EXPUNGE completed\r\n"
    );
    let left = fake.messages("INBOX");
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].uid, left[0].flags.clone()),
        (2, vec!["$Label".to_owned()])
    );
    assert_eq!(
        cmd(&mut c, "p FETCH 1 UID").await,
        "* 1 FETCH (UID 2)\r\np OK FETCH completed\r\n"
    );
    // CLOSE expunges silently; UNSELECT does not expunge.
    cmd(&mut c, "q STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(
        cmd(&mut c, "r UNSELECT").await,
        "r OK UNSELECT completed\r\n"
    );
    assert_eq!(fake.messages("INBOX").len(), 1);
    cmd(&mut c, "s SELECT INBOX").await;
    assert_eq!(cmd(&mut c, "t CLOSE").await, "t OK CLOSE completed\r\n");
    assert!(fake.messages("INBOX").is_empty());
    assert_eq!(
        cmd(&mut c, "u CHECK").await,
        "u BAD No mailbox selected\r\n"
    );
    logout(&fake, &mut c).await;

    let expunged: Vec<ImapEvent> = fake
        .events()
        .into_iter()
        .filter(|e| matches!(e, ImapEvent::Expunged { .. }))
        .collect();
    assert_eq!(
        expunged,
        [
            ImapEvent::Expunged {
                mailbox: "INBOX".into(),
                uids: vec![1]
            },
            ImapEvent::Expunged {
                mailbox: "INBOX".into(),
                uids: vec![2]
            }
        ]
    );
    no_violations(&fake);
}

#[tokio::test]
async fn append_megabytes_both_literal_kinds() {
    let fake = FakeImap::start(script().capability("UIDPLUS")).await;
    let mut c = logged_in_client(&fake).await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..30_000 {
        big.extend_from_slice(format!("{i:08} {}\r\n", "x".repeat(90)).as_bytes());
    }
    assert!(big.len() > 3_000_000);

    let go_ahead = c
        .imap_command(&format!(
            "a APPEND INBOX (\\Seen) \"01-Jan-2024 10:00:00 +0000\" {{{}}}",
            big.len()
        ))
        .await
        .unwrap();
    assert_eq!(text(&go_ahead), "+ Ready for literal data\r\n");
    c.send_raw(&big).await.unwrap();
    c.send_raw(b"\r\n").await.unwrap();
    assert_eq!(
        text(&c.read_imap_response("a").await.unwrap()),
        "a OK [APPENDUID 1000 3] APPEND completed\r\n"
    );
    let stored = &fake.messages("INBOX")[2];
    assert!(stored.body == big, "APPENDed bytes differ");
    assert_eq!(stored.flags, ["\\Seen"]);
    assert_eq!(stored.internal_date, "01-Jan-2024 10:00:00 +0000");

    // Fetched back byte-identical, framed by count.
    let response = cmd(&mut c, "b SELECT INBOX").await;
    assert!(response.contains("* 3 EXISTS\r\n"), "{response}");
    let raw = c.imap_command("c FETCH 3 BODY.PEEK[]").await.unwrap();
    let head = format!("* 3 FETCH (BODY[] {{{}}}\r\n", big.len());
    assert_eq!(text(&raw[..head.len()]), head);
    assert!(
        raw[head.len()..head.len() + big.len()] == big[..],
        "FETCHed bytes differ"
    );
    assert_eq!(
        text(&raw[head.len() + big.len()..]),
        ")\r\nc OK FETCH completed\r\n"
    );

    // LITERAL+: no continuation; into the selected mailbox, EXISTS first.
    c.send_raw(b"d APPEND \"Sent Items\" {5+}\r\nhello\r\n")
        .await
        .unwrap();
    assert_eq!(
        text(&c.read_imap_response("d").await.unwrap()),
        "d OK [APPENDUID 1001 1] APPEND completed\r\n"
    );
    c.send_raw(b"e APPEND INBOX {5+}\r\nagain\r\n")
        .await
        .unwrap();
    assert_eq!(
        text(&c.read_imap_response("e").await.unwrap()),
        "* 4 EXISTS\r\ne OK [APPENDUID 1000 4] APPEND completed\r\n"
    );
    c.send_raw(b"f APPEND Nope {1+}\r\nx\r\n").await.unwrap();
    assert_eq!(
        text(&c.read_imap_response("f").await.unwrap()),
        "f NO [TRYCREATE] No such mailbox\r\n"
    );
    assert_eq!(
        cmd(&mut c, "g CREATE Nope").await,
        "g OK CREATE completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "h CREATE inbox").await,
        "h NO [ALREADYEXISTS] Mailbox exists\r\n"
    );
    c.send_raw(b"i APPEND Nope {1+}\r\nx\r\n").await.unwrap();
    c.read_imap_response("i").await.unwrap();
    assert_eq!(
        cmd(
            &mut c,
            "j STATUS Nope (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)"
        )
        .await,
        "* STATUS Nope (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 1002 UNSEEN 1 RECENT 0)\r\n\
         j OK STATUS completed\r\n"
    );
    assert_eq!(
        cmd(&mut c, "k APPEND INBOX \"hello\"").await,
        "k BAD APPEND's message must be a literal\r\n"
    );
    logout(&fake, &mut c).await;

    assert_eq!(fake.mailboxes(), ["INBOX", "Sent Items", "Nope"]);
    assert_eq!(fake.messages("Sent Items")[0].body, b"hello");
    let appended: Vec<(String, usize, bool)> = fake
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ImapEvent::Appended {
                mailbox,
                size,
                synchronizing,
                ..
            } => Some((mailbox, size, synchronizing)),
            _ => None,
        })
        .collect();
    assert_eq!(
        appended,
        [
            ("INBOX".to_owned(), big.len(), true),
            ("Sent Items".to_owned(), 5, false),
            ("INBOX".to_owned(), 5, false),
            ("Nope".to_owned(), 1, false),
        ]
    );
    no_violations(&fake);
}

#[tokio::test]
async fn literal_plus_not_offered() {
    let fake = FakeImap::start(script().literal_plus(false)).await;
    let (mut c, greeting) = connect(&fake).await;
    assert!(!caps_in(&greeting).contains(&"LITERAL+".to_owned()));
    login(&mut c).await;
    // The bytes are read and dropped, so the session stays in step.
    c.send_raw(b"a APPEND INBOX {5+}\r\nhello\r\n")
        .await
        .unwrap();
    assert_eq!(
        text(&c.read_imap_response("a").await.unwrap()),
        "a BAD LITERAL+ not offered\r\n"
    );
    assert_eq!(cmd(&mut c, "b NOOP").await, "b OK NOOP completed\r\n");
    logout(&fake, &mut c).await;
    assert_eq!(fake.messages("INBOX").len(), 2);
    assert_eq!(
        violations(&fake),
        ["non-synchronising literal {n+} without LITERAL+"]
    );
}

#[tokio::test]
async fn idle_wakes_up_for_other_sessions() {
    let fake = FakeImap::start(script()).await;
    let mut a = logged_in_client(&fake).await;
    cmd(&mut a, "a1 SELECT INBOX").await;
    assert_eq!(a.command("a2 IDLE").await.unwrap(), "+ idling");

    // Another session APPENDs: the idler hears of it at once.
    let mut b = logged_in_client(&fake).await;
    b.send_raw(b"b1 APPEND INBOX {5+}\r\nhello\r\n")
        .await
        .unwrap();
    assert!(text(&b.read_imap_response("b1").await.unwrap()).starts_with("b1 OK "));
    assert_eq!(a.read_line().await.unwrap(), "* 3 EXISTS");

    // A delivery from the test side too.
    fake.deliver("INBOX", MSG3).unwrap();
    assert_eq!(a.read_line().await.unwrap(), "* 4 EXISTS");

    // An EXPUNGE elsewhere.
    cmd(&mut b, "b2 SELECT INBOX").await;
    cmd(&mut b, "b3 STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_eq!(
        cmd(&mut b, "b4 EXPUNGE").await,
        "* 1 EXPUNGE\r\nb4 OK EXPUNGE completed\r\n"
    );
    assert_eq!(a.read_line().await.unwrap(), "* 1 EXPUNGE");

    // Another mailbox changing wakes nobody.
    b.send_raw(b"b5 APPEND \"Sent Items\" {1+}\r\nx\r\n")
        .await
        .unwrap();
    b.read_imap_response("b5").await.unwrap();

    a.send("DONE").await.unwrap();
    assert_eq!(
        text(&a.read_imap_response("a2").await.unwrap()),
        "a2 OK IDLE terminated\r\n"
    );
    assert_eq!(
        cmd(&mut a, "a3 FETCH 3 UID").await,
        "* 3 FETCH (UID 4)\r\na3 OK FETCH completed\r\n"
    );

    // Anything but DONE ends IDLE with BAD.
    assert_eq!(a.command("a4 IDLE").await.unwrap(), "+ idling");
    assert_eq!(a.command("a5 NOOP").await.unwrap(), "a4 BAD Expected DONE");
    logout(&fake, &mut a).await;
    logout(&fake, &mut b).await;

    let events = fake.events();
    let count = |e: &ImapEvent| events.iter().filter(|x| *x == e).count();
    assert_eq!(count(&ImapEvent::IdleStarted), 2);
    assert_eq!(count(&ImapEvent::IdleDone), 1);
    assert_eq!(violations(&fake), ["a line of 7 octets in IDLE, not DONE"]);
}

#[tokio::test]
async fn noop_reports_what_other_sessions_did() {
    let fake = FakeImap::start(script()).await;
    let mut a = logged_in_client(&fake).await;
    cmd(&mut a, "a1 SELECT INBOX").await;
    assert_eq!(cmd(&mut a, "a2 NOOP").await, "a2 OK NOOP completed\r\n");
    fake.deliver("INBOX", MSG3).unwrap();
    let mut b = logged_in_client(&fake).await;
    cmd(&mut b, "b1 SELECT INBOX").await;
    cmd(&mut b, "b2 STORE 1:2 +FLAGS.SILENT (\\Deleted)").await;
    cmd(&mut b, "b3 CLOSE").await;
    assert_eq!(
        cmd(&mut a, "a3 NOOP").await,
        "* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXISTS\r\na3 OK NOOP completed\r\n"
    );
    assert_eq!(
        cmd(&mut a, "a4 FETCH 1 (UID BODY.PEEK[])").await,
        format!(
            "* 1 FETCH (UID 3 BODY[] {{{}}}\r\n{})\r\na4 OK FETCH completed\r\n",
            MSG3.len(),
            text(MSG3)
        )
    );
    assert_eq!(fake.deliver("Nope", "x"), None);
    logout(&fake, &mut a).await;
    logout(&fake, &mut b).await;
    no_violations(&fake);
}

#[tokio::test]
async fn syntax_errors_and_unknown_commands() {
    let fake = FakeImap::start(script()).await;
    let (mut c, _) = connect(&fake).await;
    for (line, answer) in [
        ("", "* BAD empty command line"),
        ("a+b NOOP", "* BAD invalid tag"),
        ("NOOP", "NOOP BAD missing command"),
        ("a NOOP ", "a BAD trailing space"),
        ("a LOGIN \"alice pw", "a BAD unterminated quoted string"),
        ("a LOGIN alice  pw", "a BAD unexpected space"),
        ("a LOGIN (alice pw", "a BAD unclosed '('"),
    ] {
        assert_eq!(c.command(line).await.unwrap(), answer, "{line:?}");
    }
    let v = violations(&fake);
    assert_eq!(v.len(), 7, "{v:?}");
    assert!(v.iter().all(|v| v.starts_with("syntax: ")), "{v:?}");

    // Not violations: a well-formed command the fake does not know, or
    // one with wrong arguments.
    assert_eq!(c.command("a FROB").await.unwrap(), "a BAD Unknown command");
    assert_eq!(
        c.command("a CAPABILITY now").await.unwrap(),
        "a BAD CAPABILITY takes no arguments"
    );
    login(&mut c).await;
    assert_eq!(
        c.command("b XYZZY 1").await.unwrap(),
        "b BAD Unknown command"
    );
    assert_eq!(
        cmd(&mut c, "c ID (\"name\" \"test\")").await,
        "* ID (\"name\" \"postern-testkit fake IMAP\")\r\nc OK ID completed\r\n"
    );
    logout(&fake, &mut c).await;
    assert_eq!(violations(&fake).len(), 7);
    assert!(fake.commands().contains(&"XYZZY".to_owned()));
}
