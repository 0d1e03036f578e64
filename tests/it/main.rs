//! Integration tests: one binary, a module per area.

// Helpers outside #[test] functions panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod alert;
mod catalog;
mod cli;
mod common;
mod deletes;
mod files;
mod functions;
mod gold;
mod infra;
mod ingest;
mod maintain;
mod mssql;
mod operations;
mod query;
mod report;
mod reresolve;
mod silver;
mod snapshots;
mod views;
mod wire;
