//! A small test harness for test binaries that re-run themselves as child processes (crash
//! tests, multi-process herds) and therefore set `harness = false`: it runs named cases,
//! prints one line each and the closing `test result:` line `cargo test` prints, and exits
//! non-zero when any case failed.

use std::panic::RefUnwindSafe;
use std::time::Instant;

/// One named case.
pub type Case = Box<dyn Fn() + RefUnwindSafe>;

/// Runs every case (a panicking case fails, the others still run) and exits with 101 when any
/// failed, as the standard harness does.
pub fn run<N: std::fmt::Display>(cases: Vec<(N, Case)>) {
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in cases {
        let started = Instant::now();
        match std::panic::catch_unwind(&case) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.1?})", started.elapsed());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

/// A case from a plain function.
pub fn case(name: &'static str, f: fn()) -> (&'static str, Case) {
    (name, Box::new(f))
}
