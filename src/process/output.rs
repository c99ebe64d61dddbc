//! A child's output: the bounded tail of stderr kept for error messages,
//! line-by-line reading for callbacks, and the byte relay between a pipe
//! and a child (with the tally of what went through).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// How long we keep reading a child's stdout/stderr after it exited, in case
/// background processes it left behind hold the pipes open.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Most lines kept of a child's stderr for error messages.
pub const STDERR_TAIL_LINES: usize = 20;

/// Most bytes kept of a child's stderr for error messages.
pub const STDERR_TAIL_BYTES: usize = 4096;

/// Longest line handed to a line callback; longer lines are cut into
/// pieces of this size.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Create a pipe, both ends close-on-exec (a child gets an end only as
/// the stdin/stdout it was given). Returns `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Bytes of a stream counted and hashed (SHA-256) as they pass, so a
/// dump's size and digest are known without reading it again.
#[derive(Clone, Default)]
pub struct Tally {
    bytes: u64,
    hasher: sha2::Sha256,
}

impl fmt::Debug for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tally").field("bytes", &self.bytes).finish()
    }
}

impl Tally {
    /// Count and hash `chunk`.
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.bytes += chunk.len() as u64;
        self.hasher.update(chunk);
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The SHA-256 of what was seen, lowercase hex.
    pub fn sha256_hex(&self) -> String {
        use sha2::Digest;
        self.hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Size of the buffer of [`relay`].
const RELAY_BUFFER: usize = 256 * 1024;

/// Copy everything from the pipe end `from` to the pipe end `to`,
/// counting and hashing it on the way, until `from` reaches its end;
/// `to` is closed when done (its reader sees the end of the stream). An
/// error (the reader went away: `BrokenPipe`) drops both ends, so the
/// writer of `from` gets `EPIPE` too.
pub async fn relay(from: OwnedFd, to: OwnedFd) -> io::Result<Tally> {
    relay_counting(from, to, &|_| {}).await
}

/// [`relay`], telling `on_bytes` the bytes copied so far after each chunk.
pub async fn relay_counting(
    from: OwnedFd,
    to: OwnedFd,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> io::Result<Tally> {
    use tokio::io::AsyncWriteExt;
    let mut input = tokio::net::unix::pipe::Receiver::from_owned_fd(from)?;
    let mut output = tokio::net::unix::pipe::Sender::from_owned_fd(to)?;
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut tally = Tally::default();
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        tally.update(&buf[..n]);
        output.write_all(&buf[..n]).await?;
        on_bytes(tally.bytes());
    }
    output.flush().await?;
    Ok(tally)
}

/// Keeps the last lines of a stream, bounded in lines and bytes.
#[derive(Debug)]
pub(crate) struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl Tail {
    /// An empty tail keeping at most this much.
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Add a line (without newline).
    pub(crate) fn push(&mut self, line: &str) {
        let line = if line.len() > self.max_bytes {
            // Keep the end of an overlong line, on a char boundary.
            let mut start = line.len() - self.max_bytes;
            while !line.is_char_boundary(start) {
                start += 1;
            }
            &line[start..]
        } else {
            line
        };
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.lines.len() > self.max_lines || (self.bytes > self.max_bytes + 1) {
            match self.lines.pop_front() {
                Some(l) => self.bytes -= l.len() + 1,
                None => break,
            }
        }
    }

    /// The kept lines, joined with newlines.
    pub(crate) fn text(&self) -> String {
        let v: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        v.join("\n")
    }
}

/// Read `r` line by line, calling `f` with each line (without `\n` or a
/// trailing `\r`); overlong lines are cut at [`MAX_LINE_BYTES`]. Read errors
/// end the stream.
pub(super) async fn for_each_line<R: AsyncRead + Unpin>(r: R, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf: Vec<u8> = Vec::new();
    let emit = |buf: &mut Vec<u8>, f: &mut dyn FnMut(&str)| {
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        f(&String::from_utf8_lossy(buf));
        buf.clear();
    };
    loop {
        let avail = match r.fill_buf().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("error reading a child's output: {e}");
                break;
            }
        };
        if avail.is_empty() {
            break;
        }
        let room = MAX_LINE_BYTES - buf.len();
        let chunk = &avail[..avail.len().min(room)];
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                buf.extend_from_slice(&chunk[..i]);
                r.consume(i + 1);
                emit(&mut buf, &mut f);
            }
            None => {
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                r.consume(n);
                if buf.len() >= MAX_LINE_BYTES {
                    emit(&mut buf, &mut f);
                }
            }
        }
    }
    if !buf.is_empty() {
        emit(&mut buf, &mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relay_counts_and_hashes_what_it_copies() {
        let (a_read, a_write) = pipe().unwrap();
        let (b_read, b_write) = pipe().unwrap();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut w = std::fs::File::from(a_write);
            w.write_all(b"ab").unwrap();
            w.write_all(b"c").unwrap();
        });
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut out = Vec::new();
            std::fs::File::from(b_read).read_to_end(&mut out).unwrap();
            out
        });
        let tally = relay(a_read, b_write).await.unwrap();
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), b"abc");
        assert_eq!(tally.bytes(), 3);
        assert_eq!(
            tally.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Tally::default().sha256_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        let mut t = Tail::new(3, 100);
        for i in 0..10 {
            t.push(&format!("line {i}"));
        }
        assert_eq!(t.text(), "line 7\nline 8\nline 9");
    }

    #[test]
    fn tail_keeps_last_bytes() {
        let mut t = Tail::new(100, 10);
        t.push("aaaa");
        t.push("bbbb");
        t.push("cccc");
        assert_eq!(t.text(), "bbbb\ncccc");
        t.push("0123456789abcdef");
        assert_eq!(t.text(), "6789abcdef");
        let mut t = Tail::new(100, 5);
        t.push("ééééé");
        assert!(t.text().len() <= 5 && t.text().chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn lines_are_split_and_cut() {
        let data: &[u8] = b"one\r\ntwo\n\nlast";
        let mut got = Vec::new();
        for_each_line(data, |l| got.push(l.to_string())).await;
        assert_eq!(got, vec!["one", "two", "", "last"]);
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut lens = Vec::new();
        for_each_line(&long[..], |l| lens.push(l.len())).await;
        assert_eq!(lens, vec![MAX_LINE_BYTES, 10]);
    }
}
