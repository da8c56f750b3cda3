//! POP3: a stray line in its own segment, in the socket or in the buffer,
//! is never paired with the next command.

use super::*;

/// The stray arrives 100 ms after STAT's reply; the client sends DELE only
/// after 300 ms, so the stray sits in postern's socket (not in its buffer)
/// when DELE is due. The server answers DELE with -ERR.
#[tokio::test]
async fn pop3_stray_line_in_the_socket_is_not_paired_with_dele() {
    let stray = Stray {
        after: "STAT",
        wait: Duration::from_millis(100),
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    assert_eq!(c.command("STAT").await.expect("STAT"), "+OK 1 10");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = pop3_reply(&mut c, "DELE 5").await;
    assert_pop3_temp_failure(&mut c, "DELE 5", r).await;
    assert!(
        !seen.received("DELE 5"),
        "postern sent DELE upstream with an unsolicited line pending"
    );
    gw.stop().await;
}

/// The stray is written right after STAT's reply, before postern runs
/// again: it lands in postern's buffer; the client sends DELE at once.
#[tokio::test]
async fn pop3_stray_line_in_the_buffer_is_not_paired_with_dele() {
    let stray = Stray {
        after: "STAT",
        wait: Duration::ZERO,
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    assert_eq!(c.command("STAT").await.expect("STAT"), "+OK 1 10");
    let r = pop3_reply(&mut c, "DELE 5").await;
    assert_pop3_temp_failure(&mut c, "DELE 5", r).await;
    assert_eq!(seen.strays(), 1);
    gw.stop().await;
}

/// The stray follows the login reply (the upstream connection may have
/// been opened at login); the next command must not get it.
#[tokio::test]
async fn pop3_stray_line_after_login_is_not_paired_with_the_next_command() {
    let stray = Stray {
        after: "PASS",
        wait: Duration::from_millis(100),
        line: b"+OK 7 777 STRAY\r\n",
    };
    let (up, seen) = scripted(move |p| pop3_server(p, Some(stray))).await;
    let gw = start(&pop3_yaml(up, FAST)).await;
    let mut c = pop3_login(gw.addr("p")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.strays(), 1, "the fake did not send its stray line");
    let r = pop3_reply(&mut c, "STAT").await;
    assert_pop3_temp_failure(&mut c, "STAT", r).await;
    gw.stop().await;
}
