//! A real `tabacco metadb` child process for the integration tests: started
//! with a configuration file and flags, its address read from its
//! `listening on` line, its stderr kept in a file, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tabacco metadb`.
pub struct MetadbServer {
    child: Child,
    /// `http(s)://127.0.0.1:PORT`.
    pub base: String,
    /// Where its stderr goes.
    log: PathBuf,
}

impl MetadbServer {
    /// Start the binary with `--config config` and `args`; wait for its
    /// `listening on` line.
    pub fn start(dir: &Path, config: &Path, args: &[&str]) -> MetadbServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tabacco"));
        command.arg("--config").arg(config).arg("metadb").args(args);
        MetadbServer::spawn(dir, command)
    }

    /// Start `command` (a `tabacco ... metadb ...` command line); wait for
    /// its `listening on` line.
    pub fn spawn(dir: &Path, mut command: Command) -> MetadbServer {
        let log = dir.join(format!("metadb-{}.log", uuid::Uuid::now_v7()));
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tabacco metadb");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no 'listening on' line (got {line:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        MetadbServer {
            base: base.to_owned(),
            child,
            log,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, and insist on a clean exit within 15 s.
    pub fn terminate(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "exit {status} after SIGTERM; log:\n{log}");
                return log;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tabacco metadb did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MetadbServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
