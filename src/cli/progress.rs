//! Progress display for long operations: bars on a terminal (indicatif),
//! periodic structured log lines otherwise. Log output goes through
//! [`suspend`] so it never tears a bar.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use tracing::info;

use crate::manager::Observer;
use crate::model::{Dataset, RunningJobStatus};
use crate::repository::SnapshotInfo;

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Run `f` (which writes to the terminal) with the progress bars hidden.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match MULTI.get() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// A `tracing` writer that hides progress bars while it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// The observer for this process: bars when standard error is a terminal,
/// log lines every 10 s otherwise.
pub fn observer() -> Arc<dyn Observer> {
    if std::io::stderr().is_terminal() {
        let multi = MULTI.get_or_init(MultiProgress::new).clone();
        Arc::new(Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
        })
    } else {
        Arc::new(LogLines {
            every: Duration::from_secs(10),
            last: Mutex::new(HashMap::new()),
        })
    }
}

/// One line describing restic's progress.
pub fn describe(st: &RunningJobStatus) -> String {
    // A stream (a pipe atom's dump) counts bytes only.
    let mut s = String::new();
    if st.files_done > 0 || st.total_files > 0 {
        s.push_str(&format!("{} files", st.files_done));
        if st.total_files > 0 {
            s.push_str(&format!("/{}", st.total_files));
        }
        s.push_str(", ");
    }
    s.push_str(&HumanBytes(st.bytes_done.max(0) as u64).to_string());
    if st.total_bytes > 0 {
        s.push_str(&format!("/{}", HumanBytes(st.total_bytes as u64)));
    }
    if st.seconds_remaining > 0 {
        s.push_str(&format!(", {}s left", st.seconds_remaining));
    }
    s
}

struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn bar(&self, ds: &Dataset) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(ds.id.clone())
            .or_insert_with(|| {
                let pb = self.multi.add(ProgressBar::new(1000));
                let style = ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30}] {percent:>3}% {msg} ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                pb.set_style(style);
                pb.set_prefix(format!("{}/{}", ds.source, ds.name));
                pb.enable_steady_tick(Duration::from_millis(200));
                pb
            })
            .clone()
    }
}

impl Observer for Bars {
    fn dataset_started(&self, ds: &Dataset) {
        self.bar(ds).set_message("starting");
    }
    fn progress(&self, ds: &Dataset, st: &RunningJobStatus) {
        let pb = self.bar(ds);
        pb.set_position((st.percent_done.clamp(0.0, 1.0) * 1000.0) as u64);
        pb.set_message(describe(st));
    }
    fn dataset_finished(&self, ds: &Dataset, outcome: Result<&SnapshotInfo, &str>) {
        let pb = self.bar(ds);
        match outcome {
            Ok(info) => {
                pb.set_position(1000);
                pb.finish_with_message(format!(
                    "done: {} files, {}, {} added",
                    info.total_files,
                    HumanBytes(info.total_bytes.max(0) as u64),
                    HumanBytes(info.bytes_added.max(0) as u64)
                ));
            }
            Err(_) => pb.abandon_with_message("FAILED"),
        }
    }
    fn restore_finished(&self, ds: &Dataset, outcome: Result<(), &str>) {
        let pb = self.bar(ds);
        match outcome {
            Ok(()) => {
                pb.set_position(1000);
                pb.finish_with_message("restored");
            }
            Err(_) => pb.abandon_with_message("FAILED"),
        }
    }
}

struct LogLines {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Observer for LogLines {
    fn progress(&self, ds: &Dataset, st: &RunningJobStatus) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = last
            .get(&ds.id)
            .is_none_or(|t| now.duration_since(*t) >= self.every);
        if due {
            last.insert(ds.id.clone(), now);
            info!(
                percent = format!("{:.1}", st.percent_done * 100.0),
                files_done = st.files_done,
                bytes_done = st.bytes_done,
                "progress: {}",
                describe(st)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_omits_unknown_totals() {
        let st = RunningJobStatus {
            files_done: 3,
            bytes_done: 2048,
            ..Default::default()
        };
        assert_eq!(describe(&st), "3 files, 2.00 KiB");
        let st = RunningJobStatus {
            files_done: 3,
            total_files: 10,
            bytes_done: 0,
            total_bytes: 1 << 20,
            seconds_remaining: 4,
            ..Default::default()
        };
        assert_eq!(describe(&st), "3 files/10, 0 B/1.00 MiB, 4s left");
        let st = RunningJobStatus {
            bytes_done: 41,
            total_bytes: 41,
            ..Default::default()
        };
        assert_eq!(describe(&st), "41 B/41 B");
    }
}
