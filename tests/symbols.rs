//! Profiles are self-contained: symbolized in process, with the binary's build ID, so `go tool pprof` names
//! every site even after the binary is gone.

mod common;

use std::alloc::System;
use std::process::Command;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const CHILD_OUT: &str = "HEAP_SAMPLER_TEST_CHILD_OUT";

/// 100 blocks of 10,000 bytes and the 2,400-byte vector holding them: 101 objects, 1,002,400 bytes.
#[inline(never)]
fn site_for_symbols() -> Vec<Vec<u8>> {
    (0..100).map(|_| vec![7u8; 10_000]).collect()
}

/// The child's side of `symbols_survive_deleting_the_binary`: run by that test in a copy of this binary, it
/// writes a profile in exact mode to the path in `HEAP_SAMPLER_TEST_CHILD_OUT`. Run directly, it only checks
/// that the site is counted exactly.
#[test]
fn child_writes_a_profile() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let kept = site_for_symbols();
    let v = common::at_function(&common::profile(), "site_for_symbols");
    assert_eq!((v.inuse_objects, v.inuse_space), (101, 1_002_400));
    if let Some(path) = std::env::var_os(CHILD_OUT) {
        heap_sampler::write_profile(path).unwrap();
    }
    drop(kept);
}

#[test]
fn symbols_survive_deleting_the_binary() {
    let dir = common::temp_dir("symbols");
    let copy = dir.join("copied-test-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &copy).unwrap();
    let build_id = common::readelf_build_id(&copy);
    let profile_path = dir.join("child.pb.gz");
    let child = Command::new(&copy)
        .args(["--exact", "child_writes_a_profile", "--test-threads=1"])
        .env(CHILD_OUT, &profile_path)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child test failed:\n{}",
        String::from_utf8_lossy(&child.stdout)
    );
    std::fs::remove_file(&copy).unwrap();

    let p = common::decode(&std::fs::read(&profile_path).unwrap());
    let main = &p.mapping[0];
    assert_eq!(
        common::string(&p, main.filename),
        copy.to_str().unwrap(),
        "the copy is the main mapping"
    );
    assert_eq!(
        common::string(&p, main.build_id),
        build_id,
        "main mapping's build ID is the binary's"
    );
    let v = common::at_function(&p, "site_for_symbols");
    assert_eq!((v.inuse_objects, v.inuse_space), (101, 1_002_400));

    if let Some(go) = common::go() {
        let top = common::pprof(
            &go,
            &[
                "-top",
                "-unit=B",
                "-sample_index=inuse_space",
                profile_path.to_str().unwrap(),
            ],
        );
        assert!(
            !top.contains("Local symbolization failed"),
            "pprof tried to symbolize:\n{top}"
        );
        let line = top
            .lines()
            .find(|l| l.ends_with("symbols::site_for_symbols"))
            .unwrap_or_else(|| panic!("the demangled site in:\n{top}"));
        assert_eq!(
            line.split_whitespace().nth(3),
            Some("1002400B"),
            "site's in-use bytes:\n{top}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
