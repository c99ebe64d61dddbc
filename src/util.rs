//! Small helpers every layer uses, each written once: an error's chain on
//! one line, a mutex that survives a panicked holder, byte counts for
//! people, plain-text tables. A leaf module: it imports nothing of ours.

use std::sync::{Mutex, MutexGuard};

/// An error and its sources on one line (`a: b: c`), a source left out
/// when the text before already says it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Lock a mutex whose data stays valid even if a holder panicked (counters,
/// progress, caches): the poison is ignored rather than spread.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A byte count in binary units (`512 B`, `1.50 KiB`); negative counts
/// (unknown) read as 0.
pub fn bytes<N: TryInto<u64>>(n: N) -> String {
    indicatif::HumanBytes(n.try_into().unwrap_or(0)).to_string()
}

/// Lay out rows in columns separated by two spaces, each line starting
/// with `indent`; the last cell of a row is not padded, and no line ends
/// in spaces.
pub fn table<R: AsRef<[String]>>(rows: &[R], indent: &str) -> String {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let r = r.as_ref();
        let mut line = indent.to_string();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string(), "c".to_string()],
            vec!["dddd".to_string(), String::new()],
        ];
        assert_eq!(table(&rows, "  "), "  a     bb  c\n  dddd\n");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(-1), "0 B");
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
