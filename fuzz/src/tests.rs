//! The committed seed corpus and every past crash, replayed through the same checks the fuzzer
//! runs; and proof that the checks can fail.

use std::path::{Path, PathBuf};

use super::*;

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("a readable corpus file");
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_target_has_a_seed_corpus_and_passes_it() {
    for target in TARGETS {
        let seeds = inputs(&root().join("corpus").join(target.name));
        assert!(seeds.len() >= 3, "{}: only {} seeds", target.name, seeds.len());
        for (path, bytes) in seeds {
            let outcome = std::panic::catch_unwind(|| (target.check)(&bytes));
            assert!(outcome.is_ok(), "{} fails on its seed {}", target.name, path.display());
        }
    }
}

#[test]
fn every_crash_found_stays_fixed() {
    let mut replayed = 0;
    for target in TARGETS {
        for (path, bytes) in inputs(&root().join("regressions").join(target.name)) {
            let outcome = std::panic::catch_unwind(|| (target.check)(&bytes));
            assert!(outcome.is_ok(), "{} fails again on {}", target.name, path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no regression inputs found");
}

#[test]
fn the_checks_catch_what_they_guard_against() {
    // A leak: the secret is in the text, and not because of fixed wording.
    let leak = std::panic::catch_unwind(|| {
        assert_hidden("token abcdefgh9 expired", "abcdefgh9", |other| format!("token {other} expired"))
    });
    assert!(leak.is_err());
    // Fixed wording that merely coincides with a secret is not a leak.
    assert_hidden("the token response is not JSON", "response", |_| "the token response is not JSON".into());
    // The oracle's signature is Webex's (and byova's) and differs per body.
    let secret = WebhookSecret::new(WEBHOOK_SECRET);
    assert_eq!(expected_signature(b"{}"), byova_core::webhook::sign(&secret, b"{}"));
    assert_ne!(expected_signature(b"{}"), expected_signature(b"{ }"));
    // Secrets are found however deeply the body nests them.
    assert_eq!(secret_values(br#"{"a":[{"refresh_token":"r1"}],"access_token":"a1"}"#), ["r1", "a1"]);
    // Secrets are found in URLs that parse and in URLs that do not.
    let url = "redis://u:hunter22@h:99999/0?password=pw2&x=1";
    let found: Vec<&str> = secret_ranges(url).into_iter().map(|r| &url[r]).collect();
    assert_eq!(found, ["hunter22", "pw2"]);
    assert_eq!(with_other_secrets("a://u:pQ@h", &secret_ranges("a://u:pQ@h")), "a://u:QJ@h");
}

#[test]
fn every_target_has_an_entry_point_and_xtask_runs_it() {
    // xtask has no dependencies, so it names the targets again; they must not drift apart.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("the manifest");
    let xtask = std::fs::read_to_string(root().join("../xtask/src/fuzz.rs")).expect("xtask's fuzz.rs");
    for target in TARGETS {
        let entry = root().join("fuzz_targets").join(format!("{}.rs", target.name));
        let source =
            std::fs::read_to_string(&entry).unwrap_or_else(|_| panic!("{} has no entry point", target.name));
        assert!(
            source.contains(&format!("byova_fuzz::{}(data)", target.name)),
            "{} calls another check",
            target.name
        );
        assert!(manifest.contains(&format!("name = \"{}\"", target.name)), "{} is no [[bin]]", target.name);
        assert!(
            xtask.contains(&format!("\"{}\"", target.name)),
            "cargo xtask fuzz does not run {}",
            target.name
        );
    }
    let entries = std::fs::read_dir(root().join("fuzz_targets")).expect("fuzz_targets").count();
    assert_eq!(entries, TARGETS.len(), "an entry point with no target in TARGETS");
}
