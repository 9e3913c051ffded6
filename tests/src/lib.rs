//! byova's end-to-end test support.
//!
//! - [`herd`]: the multi-process herd every shared storage backend is tested with (4 processes
//!   × 250 callers on one expired token must cause exactly one token-endpoint call), written
//!   once for the file, Redis and SQL tests.
//! - README.md's code blocks run as doc-tests through this crate, so the README cannot drift
//!   from the API.

pub mod herd;

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
