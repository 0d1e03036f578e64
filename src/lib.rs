//! tunelake: a serverless lakehouse pipeline for music-streaming data.
//!
//! The library holds everything; the `tunelake` binary only parses the command line.
//! Modules follow the pipeline: `config` (the pipeline file), `source` (SQL and file sources),
//! `lake` (object storage: paths, watermarks, the event log), `stages` (ingest, silver, gold),
//! `runs` (a stage run with its events and alert), `functions` (the Azure Functions custom
//! handler, over the small `http` server), `alert` (Graph mail or the outbox), `query`
//! (read-only SQL over the lake), `seed` (sample data), `progress` (rows per table while a
//! command runs) and `report` (the HTML run report).

pub mod alert;
pub mod cli;
pub mod config;
pub mod error;
pub mod functions;
pub mod http;
pub mod lake;
pub mod progress;
pub mod query;
pub mod report;
pub mod runs;
pub mod seed;
pub mod source;
pub mod stages;
pub mod window;

pub use error::{Error, Result};
