//! End-to-end tests of the `palisade` binary on real data, real SQLite and Debian's restic.

mod bad_input;
mod common;
mod compat;
mod jobs;
mod restore;
mod roundtrip;
mod streams;
