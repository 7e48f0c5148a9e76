//! End-to-end tests of the `palisade` binary on real data, real SQLite and Debian's restic.

mod alerts;
mod bad_input;
#[macro_use]
mod common;
mod compat;
mod daemon;
mod databases;
mod gateway;
mod jobs;
mod pitr;
mod prove;
mod restore;
mod retention;
mod roundtrip;
mod runbooks;
mod s3;
mod s3support;
mod streams;
mod tasks;
