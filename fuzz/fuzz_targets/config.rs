//! Configuration parsing and validation on arbitrary YAML text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postern_core::config::Config;

/// Longer inputs only slow the fuzzer down in the YAML parser.
const MAX_INPUT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            assert!(config.validate().is_empty(), "accepted config has problems");
        }
        Err(e) => {
            // Error messages are built for operators; rendering them must
            // not panic either.
            let _ = e.to_string();
        }
    }
});
