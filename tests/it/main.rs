//! Integration tests: the real `tabacco` binary against real restic
//! repositories and SQLite files in temporary directories.

mod common;
/// The store fault helpers (a small tmpfs), shared with the unit tests.
#[allow(dead_code)]
#[path = "../../src/metadata/faults.rs"]
mod faults;

mod agent;
mod agent_proc;
mod anywhere;
mod backup_restore;
mod browser;
mod config_check;
mod failures;
mod fleet;
mod interrupts;
mod many_atoms;
mod metadb;
mod metadb_server;
mod quickstart;
mod remote;
mod rest;
mod retention;
mod shared_repo;
mod verify;
