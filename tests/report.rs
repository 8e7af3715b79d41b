//! The text report of the channels example names `foo`'s four allocating lines.

use std::path::PathBuf;
use std::process::Command;

/// The example's binary: `cargo test` builds the examples next to the test binaries' `deps` directory; a
/// filtered run (`cargo test --test report`) does not, so build it then.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

#[test]
fn channels_report_lists_the_four_queue_lines() {
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/channels.rs"))
            .unwrap();
    let lines: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("= sync_channel::<"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 4, "foo creates four queues");

    let dir = std::env::temp_dir().join(format!("heap-sampler-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 2,000 calls allocate about 15 MB on each of the smallest lines: ~30 samples each at 512 KiB, so every
    // line is sampled (a line is missed with probability e^-30).
    let out = Command::new(example("channels"))
        .arg("2000")
        .current_dir(&dir)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in lines {
        let site = format!("channels::foo (channels.rs:{line})");
        assert!(stdout.contains(&site), "report lacks {site}:\n{stdout}");
    }
    assert!(dir.join("channels.pb.gz").metadata().unwrap().len() > 0);
    std::fs::remove_dir_all(dir).unwrap();
}
