//! Integration tests: the real `tabacco` binary against real restic
//! repositories and SQLite files in temporary directories.

mod common;

mod agent;
mod agent_proc;
mod backup_restore;
mod config_check;
mod failures;
mod fleet;
mod interrupts;
mod many_atoms;
mod metadb;
mod metadb_server;
mod remote;
mod rest;
