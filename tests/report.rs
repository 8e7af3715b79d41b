//! The text report of the channels example names `foo`'s four allocating lines.

mod common;

use std::process::Command;

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
    let out = Command::new(common::example("channels"))
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
