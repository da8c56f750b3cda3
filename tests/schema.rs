//! `postern schema` as a user runs it: the JSON Schema of the
//! configuration on stdout. (That the schema accepts every shipped example
//! and refuses broken files is tested beside it, in the core crate.)

use std::process::Command;

#[test]
fn schema_prints_the_json_schema_of_the_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("schema")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        printed["$schema"], "http://json-schema.org/draft-07/schema#",
        "{printed:#}"
    );
    assert_eq!(printed["required"], serde_json::json!(["routes"]));
    assert!(printed["definitions"]["Route"].is_object(), "{printed:#}");
    // What is printed is what the core crate's tests validate against.
    assert_eq!(printed, postern::config::json_schema().to_value());
}

/// The schema shipped next to the examples (what their modeline points an
/// editor at) is the one `postern schema` prints: regenerate it with
/// `cargo run -- schema > config/postern.schema.json` when the
/// configuration types change.
#[test]
fn the_shipped_schema_file_is_current() {
    let shipped = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/postern.schema.json"
    ))
    .expect("config/postern.schema.json");
    let shipped: serde_json::Value = serde_json::from_slice(&shipped).expect("JSON");
    assert_eq!(
        shipped,
        postern::config::json_schema().to_value(),
        "config/postern.schema.json is stale: run `cargo run -- schema > config/postern.schema.json`"
    );
}
