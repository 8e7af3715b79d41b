//! What a dump costs in memory in a service-sized binary: builds `benches/fixtures/service` (tokio, axum,
//! serde_json, regex, clap, tracing, chrono; about 45 MiB with `debug = "limited"`) in release and runs it,
//! passing its output through. The fixture explains its method and prints the figures: what the profiler holds
//! more after the first dump, the first dump's transient peak, a warm dump of a full table (65,536 distinct
//! stacks), and `stats().profiler_bytes` against what a counting inner allocator sees.
//!
//! `cargo bench --bench dump_memory`; arguments after `--` go to the fixture
//! (`cargo bench --bench dump_memory -- --help`). The fixture is built in `target/dump_memory` (or
//! `$CARGO_TARGET_DIR/dump_memory`), with its own `Cargo.lock`; the first build takes about 12 minutes on 2
//! cores, later ones only rebuild heap-sampler and the fixture.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("benches/fixtures/service/Cargo.toml");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        })
        .unwrap_or_else(|| root.join("target"))
        .join("dump_memory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let start = Instant::now();
    let built = Command::new(&cargo)
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .status();
    match built {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("building the service fixture failed: {status}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("could not run {}: {error}", cargo.to_string_lossy());
            return ExitCode::FAILURE;
        }
    }
    let binary = target.join("release/service");
    let size = std::fs::metadata(&binary).map_or(0, |m| m.len());
    println!(
        "fixture built in {:.1} s: {} ({:.1} MB)",
        start.elapsed().as_secs_f64(),
        binary.display(),
        size as f64 / 1e6
    );

    // `cargo bench` passes `--bench` to benches without a harness; the rest is for the fixture.
    let args = std::env::args().skip(1).filter(|a| a != "--bench");
    match Command::new(&binary).args(args).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("the service fixture failed: {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("could not run {}: {error}", binary.display());
            ExitCode::FAILURE
        }
    }
}
