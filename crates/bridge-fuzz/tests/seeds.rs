//! The fuzz targets' bodies on stable, over their seed corpora (`fuzz/seeds/<target>/`) and
//! every crash input the fuzzer found once it was fixed (`fuzz/regressions/<target>/`): CI
//! runs the targets without nightly, and a fixed crash stays fixed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use bridge_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/{kind}/{target}/`, sorted; none if the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs the target over its seeds (at least one) and regressions; a panic names the file.
fn run(target: &str) {
    let body = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, body)| *body)
        .unwrap();
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ holds seeds");
    for (path, bytes) in seeds.iter().chain(&inputs("regressions", target)) {
        let outcome = std::panic::catch_unwind(|| body(bytes));
        assert!(
            outcome.is_ok(),
            "fuzz target {target} panicked on {}",
            path.display()
        );
    }
}

#[test]
fn every_fuzz_target_of_the_crate_is_a_cargo_fuzz_binary_and_the_other_way_round() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|name| name.trim_matches('"'))
        })
        .collect();
    bins.sort_unstable();
    let mut targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    targets.sort_unstable();
    assert_eq!(bins, targets);
    for target in targets {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&source).unwrap();
        assert!(
            text.contains(&format!("bridge_fuzz::{target}(")),
            "{} runs bridge_fuzz::{target}",
            source.display()
        );
    }
}

#[test]
fn bridge_frame_decoders_take_their_seeds_and_past_crashes_without_panicking() {
    run("bridge_frame");
}

#[test]
fn user_frame_decoders_take_their_seeds_and_past_crashes_without_panicking() {
    run("user_frame");
}

#[test]
fn http_body_decoders_take_their_seeds_and_past_crashes_without_panicking() {
    run("http_body");
}

#[test]
fn query_string_and_loopback_checks_take_their_seeds_and_past_crashes_without_panicking() {
    run("query");
}

#[test]
fn token_checks_take_their_seeds_and_past_crashes_without_panicking() {
    run("token");
}

#[test]
fn mqtt_decoders_take_their_seeds_and_past_crashes_without_panicking() {
    run("mqtt");
}

#[test]
fn cluster_wire_decoders_take_their_seeds_and_past_crashes_without_panicking() {
    run("cluster_wire");
}

#[test]
fn device_type_files_take_their_seeds_and_past_crashes_without_panicking() {
    run("device_types");
}

#[test]
fn the_server_websocket_reads_its_seeds_and_past_crashes_as_tungstenite_does() {
    run("websocket_server");
}
