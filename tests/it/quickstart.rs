//! The README's quick start, `examples/quickstart/run.sh`, run as written
//! (against the binary under test instead of the release build): the
//! command a new user runs first must keep working.

use std::process::Command;

use crate::common::text;

#[test]
fn the_readme_quickstart_backs_up_queries_and_restores_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("qs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart/run.sh");
    let out = Command::new(script)
        .arg(&work)
        .env("TABACCO_BIN", env!("CARGO_BIN_EXE_tabacco"))
        .output()
        .expect("the quickstart script runs");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("configuration OK"), "{all}");
    assert!(
        all.contains("quickstart: restored home/users/alice and db/site2/main byte-identical"),
        "{all}"
    );
    // Run again on the same directory: a second version of everything.
    let again = Command::new(script)
        .arg(&work)
        .env("TABACCO_BIN", env!("CARGO_BIN_EXE_tabacco"))
        .output()
        .expect("the quickstart script runs");
    assert!(again.status.success(), "{}", text(&again));
}
