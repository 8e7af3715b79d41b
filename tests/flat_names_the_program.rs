//! The flat column names the program: the standard library's allocation and collections frames that lead a
//! stack are dropped by default (as Go drops its runtime's allocation frames), so `go tool pprof -top` charges
//! each allocation to the program's code that asked for it, not to `RawVecInner::try_allocate_in`.

mod common;

use std::process::Command;

const STD_PREFIXES: &[&str] = &[
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
    "<alloc::",
    "<core::",
    "<std::",
];

/// The function names of the `n` largest flat entries of a `go tool pprof -top` listing (those with any).
fn largest_flat(top: &str, n: usize) -> Vec<String> {
    top.lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter(|line| line.split_whitespace().next() != Some("0"))
        .take(n)
        .map(|line| {
            line.split_whitespace()
                .skip(5)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn the_largest_flat_entries_of_the_json_index_example_are_the_programs() {
    let Some(go) = common::go() else {
        eprintln!("go is not installed: skipped (apt-get install golang-go)");
        return;
    };
    let dir = common::temp_dir("flat-names");
    let out = Command::new(common::example("json_index"))
        .arg("5000")
        .current_dir(&dir)
        .output()
        .expect("run the json_index example");
    assert!(
        out.status.success(),
        "json_index failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = dir.join("json_index.pb.gz");
    for sample_index in ["inuse_space", "alloc_space"] {
        let top = common::pprof(
            &go,
            &[
                "-top",
                &format!("-sample_index={sample_index}"),
                profile.to_str().unwrap(),
            ],
        );
        let largest = largest_flat(&top, 5);
        assert!(!largest.is_empty(), "no entries in:\n{top}");
        for name in &largest {
            assert!(
                !STD_PREFIXES.iter().any(|p| name.starts_with(p)),
                "{sample_index}: a standard library frame among the five largest flat entries: {name}\n{top}"
            );
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
