//! Headless Chromium (Debian's `chromium`, installed by `scripts/deps`) for
//! the tests that check what a person sees on the web pages: the page is
//! loaded in a real browser and its rendered text (`innerText`: what CSS
//! lays out, without markup) is read through the DevTools protocol over a
//! pipe (`--remote-debugging-pipe`: file descriptors 3 and 4, no port).
//! Fails loudly when chromium is missing. The browser is killed when
//! dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A headless browser driven over the DevTools pipe.
pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start `chromium --headless` with a fresh profile.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // Chrome reads commands from fd 3 and writes answers to fd 4.
        let (cmd_read, cmd_write) = nix::unistd::pipe().unwrap();
        let (ans_read, ans_write) = nix::unistd::pipe().unwrap();
        let (r3, w4) = (cmd_read.as_raw_fd(), ans_write.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        // Its own process group, so that drop stops its helper processes too.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(r3, 3) < 0 || libc::dup2(w4, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start chromium ({e}): the browser tests need Debian's chromium \
                 (scripts/deps installs it)"
            )
        });
        drop(cmd_read);
        drop(ans_write);
        let (tx, rx) = channel();
        let reader: OwnedFd = ans_read;
        std::thread::spawn(move || {
            let mut r = BufReader::new(std::fs::File::from(reader));
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to: std::fs::File::from(cmd_write),
            from: rx,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Call a DevTools method (in `session`, if given) and return its
    /// result; panics on an error answer or after 60 s.
    pub fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    if let Some(e) = v.get("error") {
                        panic!("chromium {method}: {e}");
                    }
                    return v["result"].clone();
                }
                Ok(_) => continue, // events, other answers
                Err(RecvTimeoutError::Timeout) => panic!("chromium: no answer to {method}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("chromium exited (answering {method})")
                }
            }
        }
    }

    /// Load `url` in a new tab and return its rendered text
    /// (`document.body.innerText`) once the page has loaded.
    pub fn rendered_text(&mut self, url: &str) -> String {
        let target = self.call("Target.createTarget", json!({"url": url}), None)["targetId"]
            .as_str()
            .unwrap()
            .to_owned();
        let session = self.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
            None,
        )["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        let eval = |b: &mut Browser, expr: &str| {
            b.call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
                Some(&session),
            )["result"]["value"]
                .clone()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = eval(self, "document.readyState + ' ' + location.href");
            let ready = ready.as_str().unwrap_or("");
            if ready.starts_with("complete ") && !ready.ends_with("about:blank") {
                break;
            }
            assert!(Instant::now() < deadline, "{url} did not load: {ready}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = eval(self, "document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.call("Target.closeTarget", json!({"targetId": target}), None);
        text
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
