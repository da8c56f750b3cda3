//! The deployment files hold what the README promises: the container image
//! (non-root, health check, drain on SIGTERM), the compose LAN relay and
//! the Kubernetes manifests (replicas, probes on the admin endpoint,
//! hardening, secrets as files), and the postern configurations inside
//! them are valid.

use std::path::{Path, PathBuf};

use postern::config::Config;
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn valid_postern_config(text: &str, what: &str) -> Config {
    Config::from_yaml(text, Path::new(what)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn the_dockerfile_runs_postern_unprivileged_with_a_health_check() {
    let text = std::fs::read_to_string(repo("docker/Dockerfile")).expect("Dockerfile");
    let last_from = text.lines().rev().find(|l| l.starts_with("FROM "));
    assert_eq!(
        last_from,
        Some("FROM scratch"),
        "the runtime stage is empty"
    );
    for want in [
        "USER 65534:65534",
        "STOPSIGNAL SIGTERM",
        "\"/usr/local/bin/postern\", \"health\"",
        "COPY docker/postern.yaml /etc/postern/postern.yaml",
        "/var/lib/postern/",
        "org.opencontainers.image.title",
        "EXPOSE 3999 2525 9725",
    ] {
        assert!(text.contains(want), "Dockerfile lacks {want:?}");
    }
    let config = std::fs::read_to_string(repo("docker/postern.yaml")).expect("config");
    let c = valid_postern_config(&config, "docker/postern.yaml");
    assert!(
        c.admin.is_some(),
        "the image's health check needs the admin endpoint"
    );
    assert!(c
        .routes
        .iter()
        .all(|r| r.listen.address().ip().is_unspecified()));
}

#[test]
fn the_compose_relay_sees_real_clients_and_keeps_secrets_in_files() {
    let c = yaml("docker/compose.yaml");
    let s = &c["services"]["postern"];
    assert_eq!(
        s["network_mode"], "host",
        "allow-lists need the real client addresses"
    );
    assert_eq!(s["read_only"], true);
    assert_eq!(s["cap_drop"][0], "ALL");
    assert_eq!(s["restart"], "unless-stopped");
    assert_eq!(s["healthcheck"]["test"][2], "health");
    let volumes: Vec<&str> = s["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(":/etc/postern/postern.yaml:ro")),
        "{volumes:?}"
    );
    assert!(
        volumes.iter().any(|v| v.ends_with(":/var/lib/postern")),
        "{volumes:?}"
    );
    assert_eq!(s["secrets"][0], "office_pw");
    assert!(c["secrets"]["office_pw"]["file"].is_string());
    let config =
        std::fs::read_to_string(repo("docker/compose/postern.yaml.example")).expect("example");
    assert!(config.contains("/run/secrets/office_pw"));
    valid_postern_config(&config, "docker/compose/postern.yaml.example");
}

#[test]
fn the_kubernetes_manifests_hold_what_the_readme_promises() {
    let d = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65534);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    let admin = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("admin port");
    assert_eq!(admin["containerPort"], 9725);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    let volumes = pod["volumes"].as_array().expect("volumes");
    let secret = volumes
        .iter()
        .find(|v| v["secret"].is_object())
        .expect("secret volume");
    assert_eq!(
        secret["secret"]["defaultMode"], 0o400,
        "secrets readable by postern only"
    );
    assert!(pod["terminationGracePeriodSeconds"]
        .as_u64()
        .is_some_and(|s| s > 30));

    let s = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(s["kind"], "Service");
    assert_eq!(s["spec"]["ports"].as_array().map(Vec::len), Some(3));
    let p = yaml("deploy/kubernetes/pdb.yaml");
    assert_eq!(p["kind"], "PodDisruptionBudget");
    assert_eq!(p["spec"]["minAvailable"], 1);
    let sec = yaml("deploy/kubernetes/secret.yaml");
    assert_eq!(sec["kind"], "Secret");

    let cm = yaml("deploy/kubernetes/configmap.yaml");
    let config = cm["data"]["postern.yaml"]
        .as_str()
        .expect("postern.yaml in the ConfigMap");
    let c = valid_postern_config(config, "configmap postern.yaml");
    assert!(
        c.routes.iter().all(|r| r.listen.0.proxy_protocol),
        "mail ports take the PROXY protocol"
    );
    let admin = c.admin.expect("admin endpoint for the probes");
    assert_eq!(admin.listen.port(), 9725);

    let haproxy = std::fs::read_to_string(repo("deploy/kubernetes/haproxy.cfg")).expect("haproxy");
    assert!(haproxy.contains("send-proxy-v2"));
    assert!(haproxy.contains("uri /readyz"));
}
