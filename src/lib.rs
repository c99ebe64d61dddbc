//! tabacco: a backup manager for fleets of hosts. It backs up
//! application-level datasets into restic, indexes every atom centrally and
//! restores any of them anywhere by name.
//!
//! Data flows one way: `cli` -> `manager` -> `handler` -> `repository` ->
//! `process`; user commands run through `shell`; the index sits behind the
//! `metadata::MetadataStore` trait; `metadb` is the metadata server.

pub mod agent;
pub mod cli;
pub mod config;
pub mod config_manager;
pub mod exposition;
pub mod filelock;
pub mod glob;
pub mod handler;
pub mod html;
pub mod jobs;
pub mod manager;
pub mod metadata;
pub mod metadb;
pub mod model;
pub mod names;
pub mod params;
pub mod process;
pub mod redact;
pub mod repository;
pub mod retention;
pub mod runtime;
pub mod schedule;
pub mod shell;
pub mod util;
pub mod verify;
