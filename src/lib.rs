//! tunelake: a serverless lakehouse pipeline for music-streaming data.
//!
//! The library holds everything; the `tunelake` binary only parses the command line.
//! Modules follow the pipeline: `config` (the pipeline file), `source` (SQL and file sources),
//! `lake` (object storage: paths, watermarks), `stages` (ingest, silver), `query` (read-only SQL over the lake), `seed` (sample data).

pub mod cli;
pub mod config;
pub mod error;
pub mod lake;
pub mod query;
pub mod seed;
pub mod source;
pub mod stages;
pub mod window;

pub use error::{Error, Result};
