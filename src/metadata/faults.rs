//! Test support: fault injection for the stores. [`SmallTmpfs`] mounts a
//! tiny tmpfs (the tests run as root in CI) that a test fills to provoke
//! "database or disk is full" and then frees again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a few hundred KiB mounted on a temporary directory;
/// unmounted on drop.
pub(crate) struct SmallTmpfs {
    /// The mount point (removed after unmounting).
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    /// Mount a tmpfs of `size` (mount's syntax: `1m`, `512k`). `None`, with
    /// a loud message on stderr, only where mounting is refused (not
    /// root, no CAP_SYS_ADMIN): the caller skips its test then.
    pub(crate) fn mount(size: &str) -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        if !out.status.success() {
            eprintln!(
                "\n!!!!! SKIPPED: cannot mount a {size} tmpfs on {} ({}: {}); this test needs \
                 root (CAP_SYS_ADMIN) to provoke a full disk !!!!!\n",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallTmpfs { dir })
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the file system with a file until a write fails with ENOSPC;
    /// returns the file (remove it to free the space).
    pub(crate) fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0xa5u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial block, byte by byte.
        while let Ok(1) = f.write(&block[..1]) {}
        let _ = f.flush();
        path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("cannot unmount {}: {out:?}", self.dir.path().display());
        }
    }
}
