//! `SIGINT` and `SIGTERM` for command-line runs (`tabacco backup`,
//! `tabacco restore`): instead of dying on the spot (and leaving restic's
//! lock in the repository), the run stops what it is doing, its children
//! get their stop signal (restic `SIGINT`, which makes it remove its lock),
//! it waits for them, says what was interrupted and exits 130 (`SIGINT`)
//! or 143 (`SIGTERM`). A second signal while it waits ends the wait.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::CliError;
use crate::process::{self, KILL_GRACE};

/// A signal that interrupts a command-line run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// `SIGINT` (Ctrl-C).
    Int,
    /// `SIGTERM` (`kill`).
    Term,
}

impl Interruption {
    /// The signal's name.
    pub fn name(self) -> &'static str {
        match self {
            Interruption::Int => "SIGINT",
            Interruption::Term => "SIGTERM",
        }
    }

    /// The exit code a shell gives a process killed by it: 128 + signal.
    pub fn exit_code(self) -> u8 {
        match self {
            Interruption::Int => 130,
            Interruption::Term => 143,
        }
    }

    /// An error ending the run with this signal's exit code.
    pub fn error(self, error: anyhow::Error) -> CliError {
        CliError {
            code: self.exit_code(),
            error,
        }
    }
}

/// Catches `SIGINT` and `SIGTERM` from its creation on.
#[derive(Debug, Clone)]
pub struct Interrupts {
    rx: watch::Receiver<(u32, Option<Interruption>)>,
}

impl Interrupts {
    /// Catch the signals (they no longer kill the process).
    pub fn catch() -> Result<Interrupts, CliError> {
        let mut int = signal(SignalKind::interrupt()).map_err(CliError::failed)?;
        let mut term = signal(SignalKind::terminate()).map_err(CliError::failed)?;
        let (tx, rx) = watch::channel((0u32, None));
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = int.recv() => Interruption::Int,
                    _ = term.recv() => Interruption::Term,
                };
                tracing::debug!(signal = got.name(), "signal received");
                // The first signal names the interruption; later ones only
                // count.
                tx.send_modify(|(n, first)| {
                    *n += 1;
                    first.get_or_insert(got);
                });
            }
        });
        Ok(Interrupts { rx })
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<Interruption> {
        self.rx.borrow().1
    }

    /// Wait for a signal (returns at once if one came already).
    pub async fn first(&self) -> Interruption {
        let mut rx = self.rx.clone();
        loop {
            if let Some(s) = rx.borrow_and_update().1 {
                return s;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The name of the first signal, once there is one: the `stop` future
    /// for [`crate::manager::Manager::backup_until`].
    pub async fn first_name(&self) -> String {
        self.first().await.name().to_string()
    }

    /// After an interrupt: wait until the stopped children are gone (restic
    /// removing its lock), at most the kill grace and a margin, or until
    /// another signal. Returns whether they all went.
    pub async fn wait_children(&self) -> bool {
        let mut rx = self.rx.clone();
        let seen = rx.borrow_and_update().0;
        let another = async {
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if rx.borrow().0 > seen {
                    return;
                }
            }
        };
        tokio::select! {
            all = process::wait_cancelled(KILL_GRACE + Duration::from_secs(5)) => all,
            () = another => {
                tracing::warn!("second signal: not waiting for the stopped commands");
                false
            }
        }
    }
}
