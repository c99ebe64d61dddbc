//! Progress display for long operations: bars on a terminal (indicatif),
//! periodic structured log lines otherwise. Log output goes through
//! [`suspend`] so it never tears a bar.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing::info;

use crate::manager::Observer;
use crate::model::{Dataset, RunningJobStatus};
use crate::repository::SnapshotInfo;

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// `--quiet`: no bars, no summary of what went well; failures only.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Set `--quiet` for this process.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given: print failures only.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

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

/// The observer for this process: bars when standard error is a terminal
/// (and not `--quiet`), log lines every 10 s otherwise (shown with `-v`).
pub fn observer() -> Arc<dyn Observer> {
    if std::io::stderr().is_terminal() && !quiet() {
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
    s.push_str(&crate::util::bytes(st.bytes_done));
    if st.total_bytes > 0 {
        s.push_str(&format!("/{}", crate::util::bytes(st.total_bytes)));
    }
    if st.seconds_elapsed > 0 && st.bytes_done > 0 {
        s.push_str(&format!(
            ", {}/s",
            crate::util::bytes(st.bytes_done / st.seconds_elapsed)
        ));
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

/// A dataset's line before its size is known (and for streams, whose size
/// is never known): a spinner with what went through so far.
const SPINNER_TEMPLATE: &str = "{prefix:.bold} {spinner} {msg} ({elapsed})";

/// A dataset's line once restic knows its size.
const BAR_TEMPLATE: &str = "{prefix:.bold} [{bar:30}] {percent:>3}% {msg} ({elapsed})";

impl Bars {
    fn bar(&self, ds: &Dataset) -> ProgressBar {
        let mut bars = crate::util::lock(&self.bars);
        bars.entry(ds.id.clone())
            .or_insert_with(|| {
                let pb = self.multi.add(ProgressBar::new_spinner());
                if let Ok(style) = ProgressStyle::with_template(SPINNER_TEMPLATE) {
                    pb.set_style(style);
                }
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
        // Streams have no total: they keep the spinner, with throughput.
        if st.total_bytes > 0 && pb.length().is_none() {
            pb.set_length(1000);
            if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                pb.set_style(style.progress_chars("=> "));
            }
        }
        if pb.length().is_some() {
            pb.set_position((st.percent_done.clamp(0.0, 1.0) * 1000.0) as u64);
        }
        pb.set_message(describe(st));
    }
    fn dataset_finished(&self, ds: &Dataset, _outcome: Result<&SnapshotInfo, &str>) {
        // The command prints one line per dataset when it ends (ok or
        // FAILED): the bar makes room for it.
        self.bar(ds).finish_and_clear();
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
        let mut last = crate::util::lock(&self.last);
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
