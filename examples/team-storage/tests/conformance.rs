//! The team's store passes byova's storage conformance suite, every case.

use std::sync::Arc;

use team_storage::KvStore;

#[test]
fn the_team_store_passes_the_conformance_suite() {
    let store = Arc::new(KvStore::default());
    let corrupt = store.clone();
    let report = byova_testkit::conformance::check_blocking_token_storage(
        store,
        Some(Box::new(move |key| corrupt.write_raw(key, b"{\"schema\":1,"))),
    );
    assert!(report.skipped.is_empty(), "skipped: {:?}", report.skipped);
    println!("{} conformance cases passed", report.passed.len());
}
