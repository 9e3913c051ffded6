//! End-to-end tests of byova live in `tests/`.
