//! byova's end-to-end test support.
//!
//! - [`herd`]: the multi-process herd every shared storage backend is tested with (4 processes
//!   × 250 callers on one expired token must cause exactly one token-endpoint call), written
//!   once for the file, Redis and SQL tests.
//! - README.md's code blocks, and those of every published crate's README, run as doc-tests
//!   through this crate, so no README can drift from the API.

pub mod herd;
pub mod netfaults;
pub mod powerloss;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The published crates' READMEs, doc-tested like the project's.
macro_rules! crate_readmes {
    ($($name:ident => $path:literal),* $(,)?) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!($path)]
            pub struct $name;
        )*
    };
}

crate_readmes! {
    CoreReadme => "../../crates/byova-core/README.md",
    AsyncReadme => "../../crates/byova-async/README.md",
    BlockingReadme => "../../crates/byova-blocking/README.md",
    AxumReadme => "../../crates/byova-axum/README.md",
    FileReadme => "../../crates/byova-storage-file/README.md",
    RedisReadme => "../../crates/byova-storage-redis/README.md",
    SqlReadme => "../../crates/byova-storage-sql/README.md",
    TestkitReadme => "../../crates/byova-testkit/README.md",
    CliReadme => "../../crates/byova-cli/README.md",
}
