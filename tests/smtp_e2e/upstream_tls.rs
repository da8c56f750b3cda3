//! The upstream side of TLS: STARTTLS stripping and injection, and no
//! weaker mechanism after TLS.

use super::*;

#[tokio::test]
async fn starttls_stripping_and_injection_fail_closed() {
    let pki = TestPki::new();
    let cases = [
        (
            "not offered",
            SmtpScript::new().starttls(StarttlsBehaviour::NotOffered),
        ),
        (
            "refused",
            SmtpScript::new().starttls(StarttlsBehaviour::Refuse),
        ),
        (
            "EHLO refused, only HELO",
            SmtpScript::new().ehlo(EhloBehaviour::Refused),
        ),
        (
            "bytes after the go-ahead",
            SmtpScript::new().starttls(StarttlsBehaviour::AcceptThenInject(
                b"250 injected\r\n".to_vec(),
            )),
        ),
    ];
    for (what, script) in cases {
        let (up, gw) = gateway(&pki, "starttls", "plain", script).await;
        // postern greets and answers EHLO itself; the upstream is opened
        // (and found insecure) at AUTH.
        let r = greet_ehlo_auth(&gw).await;
        assert!(r[0].starts_with("421 4.7.0"), "{what}: {r:?}");
        assert!(up.fake.wait_closed(1, WAIT).await, "{what}");
        assert!(
            !up.fake.commands().iter().any(|l| l.starts_with("AUTH")),
            "{what}"
        );
        gw.stop().await;
    }
    // The route's mechanism must be offered after TLS: no weaker fallback.
    let (up, gw) = gateway(
        &pki,
        "starttls",
        "cram-md5",
        SmtpScript::new().auth_mechanisms(&["PLAIN", "LOGIN"]),
    )
    .await;
    let r = greet_ehlo_auth(&gw).await;
    assert!(r[0].starts_with("421"), "{r:?}");
    assert!(!up.fake.commands().iter().any(|l| l.starts_with("AUTH")));
    gw.stop().await;
}
