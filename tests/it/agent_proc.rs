//! A running `tabacco agent` for the integration tests: started on a free
//! port with a marker in its environment, its stderr collected, its status
//! page and metrics fetched over plain HTTP, signalled, and the processes
//! it started found through the marker. Killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Env;

/// A running agent with its log collected.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    pub addr: String,
    /// The value of `TABACCO_TEST_MARK` in its environment, inherited by
    /// every process it starts.
    pub marker: String,
}

impl Agent {
    /// Start `tabacco agent` on a free port and wait until it serves.
    pub fn start(env: &Env) -> Agent {
        let marker = format!(
            "tabacco-test-{}-{}",
            std::process::id(),
            env.dir.path().display()
        );
        let mut cmd = env.cmd(&["agent", "--http-addr", "127.0.0.1:0"]);
        cmd.env("TABACCO_TEST_MARK", &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("agent starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = l.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut agent = Agent {
            child,
            log,
            addr: String::new(),
            marker,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = agent.log();
            if let Some(i) = log.find("listening on http://") {
                let rest = &log[i + "listening on http://".len()..];
                agent.addr = rest.split('/').next().unwrap().to_string();
                break;
            }
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("agent exited with {st} before serving:\n{log}");
            }
            assert!(Instant::now() < deadline, "agent did not start:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until `cond` holds, up to `secs`; panics with the log if not.
    pub fn wait_for(&self, secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {what}; agent log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path`: status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path, &[])
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes started by the agent (they inherit its marker variable).
    pub fn children(&self) -> Vec<Proc> {
        processes_with(&self.marker, self.pid() as i32)
    }

    /// SIGTERM, and insist on an exit within 60 s.
    pub fn stop(mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(60)).is_none() {
            panic!("agent did not stop:\n{}", self.log());
        }
    }

    pub fn child_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` from `addr` (`host:port`, plain HTTP) with extra request
/// headers: status code and body.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A process seen in `/proc`.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    pub cmdline: String,
}

/// Live processes whose environment holds `TABACCO_TEST_MARK=marker`,
/// except `exclude`; zombies are not counted.
pub fn processes_with(marker: &str, exclude: i32) -> Vec<Proc> {
    let needle = format!("TABACCO_TEST_MARK={marker}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == exclude {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        out.push(Proc {
            pid,
            comm: comm.trim().to_string(),
            cmdline: cmdline.trim().to_string(),
        });
    }
    out
}
