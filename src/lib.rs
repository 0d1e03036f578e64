//! tunelake: a serverless lakehouse pipeline for music-streaming data.
//!
//! The library holds everything; the `tunelake` binary only parses the command line.
//! Modules follow the pipeline: `config` (the pipeline file), `source` (SQL and file sources),
//! `lake` (all lake I/O, with the layout in `lake::layout`), `stages` (ingest, silver, gold,
//! refresh), `runs` (a run with its events and alert), `query` (read-only SQL over the lake),
//! `alert` (Graph mail or the outbox), `seed` (sample data), `progress` (rows per table while a
//! command runs), `wire` (the PostgreSQL wire endpoint over `query`'s sessions); inside the
//! crate, `functions` (the Azure Functions custom handler over the `http` server) and `report`
//! (the HTML run report).
//!
//! What a program calls: [`config::Pipeline`] to load a pipeline file, [`lake::Lake`] to open a
//! lake, the stage entry points [`stages::ingest::Ingest`], [`stages::silver::Silver`] and
//! [`stages::gold::Gold`] (or [`runs::flow`] for a whole run), and the reports they return.

#![warn(missing_docs)]

pub mod alert;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod entra;
pub mod error;
pub(crate) mod functions;
pub mod http;
pub mod lake;
pub mod memory;
pub mod progress;
pub mod query;
pub(crate) mod report;
pub mod runs;
pub mod seed;
pub mod source;
pub mod stages;
pub mod window;
pub mod wire;

pub use error::{Error, Result};
