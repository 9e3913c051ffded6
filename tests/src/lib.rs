//! byova's end-to-end tests live in `tests/`; this library only makes README.md's code blocks
//! run as doc-tests, so the README cannot drift from the API.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
