//! Test support: fault injection for the stores. [`SmallTmpfs`] mounts a
//! tiny tmpfs (the tests run as root in CI) that a test fills to provoke
//! "database or disk is full" and then frees again. The integration tests
//! include this same file (`tests/it/common.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a few hundred KiB mounted on a directory; unmounted on drop.
pub(crate) struct SmallTmpfs {
    /// The mount point.
    path: PathBuf,
    /// The temporary directory holding the mount point, if we made it.
    _dir: Option<tempfile::TempDir>,
}

impl SmallTmpfs {
    /// Mount a tmpfs of `size` (mount's syntax: `1m`, `512k`) on a new
    /// temporary directory. `None`, with a loud message on stderr, only
    /// where mounting is refused (not root, no CAP_SYS_ADMIN): the caller
    /// skips its test then.
    pub(crate) fn mount(size: &str) -> Option<SmallTmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = SmallTmpfs::mount_on(dir.path(), size)?;
        fs._dir = Some(dir);
        Some(fs)
    }

    /// Mount a tmpfs of `size` on the existing directory `path` (as
    /// [`SmallTmpfs::mount`]).
    pub(crate) fn mount_on(path: &Path, size: &str) -> Option<SmallTmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("running mount(8)");
        if !out.status.success() {
            eprintln!(
                "\n!!!!! SKIPPED: cannot mount a {size} tmpfs on {} ({}: {}); this test needs \
                 root (CAP_SYS_ADMIN) to provoke a full disk !!!!!\n",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(SmallTmpfs {
            path: path.to_owned(),
            _dir: None,
        })
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        &self.path
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

impl SmallTmpfs {
    /// Fill the file system (as [`SmallTmpfs::fill`]), then give back
    /// `bytes` of it: small writes still fit, large ones fail. (Used by the
    /// integration tests, which include this file.)
    #[allow(dead_code)]
    pub(crate) fn fill_leaving(&self, bytes: u64) -> PathBuf {
        let path = self.fill();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(bytes)).unwrap();
        path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg("-l").arg(&self.path).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("cannot unmount {}: {out:?}", self.path.display());
        }
    }
}
