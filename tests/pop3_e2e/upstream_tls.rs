//! The upstream side of TLS: STLS stripping and injection, certificate
//! names, CAs and pins.

use super::*;

/// Each way of stripping or subverting STLS fails closed: the client gets
/// `-ERR [SYS/TEMP]` and no credential ever reaches the upstream.
#[tokio::test]
async fn stls_stripping_and_injection_fail_closed() {
    let pki = TestPki::new();
    let cases = [
        (
            "no STLS in CAPA",
            Pop3Script::new().capa(CapaBehaviour::WithoutStls),
        ),
        (
            "no CAPA, STLS refused",
            Pop3Script::new()
                .capa(CapaBehaviour::Unsupported)
                .stls(StlsBehaviour::Refuse),
        ),
        (
            "STLS refused",
            Pop3Script::new().stls(StlsBehaviour::Refuse),
        ),
        (
            "response injection after +OK",
            Pop3Script::new().stls(StlsBehaviour::AcceptThenInject(
                b"+OK injected\r\n".to_vec(),
            )),
        ),
    ];
    for (what, script) in cases {
        let up = upstream(&pki, "starttls", script.credentials("a", "b")).await;
        let gw = start(&up.route("starttls", "user").yaml()).await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        // postern greets itself; the upstream is opened (and found
        // insecure) only when the client logs in.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{what}: {r}");
        let (_, _) = c.read_to_close().await;
        assert!(
            up.fake.wait_closed(1, WAIT).await,
            "{what}: upstream not closed"
        );
        let cmds = up.fake.commands();
        assert!(
            !cmds
                .iter()
                .any(|l| l.starts_with("USER") || l.starts_with("PASS")),
            "{what}: {cmds:?}"
        );
        gw.stop().await;
    }
}

/// Certificate problems: wrong name, unknown CA, pin mismatch all fail;
/// a matching pin works.
#[tokio::test]
async fn certificate_verification_name_ca_and_pins() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let dir = TempDir::new("postern-certs");
    let good_ca = pki.write_ca_pem(dir.path());
    let other_dir = TempDir::new("postern-other");
    let other_ca = other.write_ca_pem(other_dir.path());
    let good_pin = pki.leaf_spki_sha256_base64();
    let bad_pin = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    // (what, the fake's TLS, the route's `ca`, its pins, whether it works);
    // every route checks the name `localhost`.
    let cases = vec![
        (
            "wrong certificate name",
            FakeSecurity::Tls(pki.server_config_for_names(&["other.test"])),
            Some(&good_ca),
            vec![],
            false,
        ),
        (
            "unknown CA",
            FakeSecurity::Tls(pki.server_config()),
            Some(&other_ca),
            vec![],
            false,
        ),
        (
            "default roots do not trust a private CA",
            FakeSecurity::Tls(pki.server_config()),
            None,
            vec![],
            false,
        ),
        (
            "pin mismatch",
            FakeSecurity::Tls(pki.server_config()),
            Some(&good_ca),
            vec![bad_pin],
            false,
        ),
        (
            "pin match",
            FakeSecurity::Tls(pki.server_config()),
            Some(&good_ca),
            vec![bad_pin, &good_pin],
            true,
        ),
        (
            "STLS with a wrong certificate name",
            FakeSecurity::Starttls(pki.server_config_for_names(&["other.test"])),
            Some(&good_ca),
            vec![],
            false,
        ),
    ];
    for (what, sec, ca, pins, works) in cases {
        let starttls = matches!(sec, FakeSecurity::Starttls(_));
        let fake = FakePop3::start(Pop3Script::new().credentials("a", "b").security(sec)).await;
        let security = if starttls { "starttls" } else { "tls" };
        let mut route = RouteYaml::pop3("r", fake.addr())
            .security(security)
            .auth("user")
            .server_name("localhost")
            .pins(&pins);
        if let Some(ca) = ca {
            route = route.ca(ca);
        }
        let gw = start(&route.yaml()).await;
        let mut c = LineClient::connect(gw.addr("r")).await.expect("connect");
        // The certificate is checked when the login opens the upstream.
        let r = pop3_greet_and_pass(&mut c, "a", "b").await;
        if works {
            assert!(r.starts_with("+OK"), "{what}: {r}");
        } else {
            assert!(r.starts_with("-ERR [SYS/TEMP]"), "{what}: {r}");
            assert!(
                !fake
                    .events()
                    .iter()
                    .any(|e| matches!(e, Pop3Event::LoggedIn { .. })),
                "{what}"
            );
        }
        gw.stop().await;
    }
}
