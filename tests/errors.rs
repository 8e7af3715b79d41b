//! Bad input gets a clear error, and the allocator keeps working.

mod common;

use std::alloc::System;

use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

#[test]
fn unwritable_path_is_an_error_that_names_the_path() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let dir = common::temp_dir("errors");
    for path in [
        dir.join("missing-directory").join("heap.pb.gz"),
        dir.clone(),
    ] {
        let error = heap_sampler::write_profile(&path).expect_err("cannot write there");
        let message = error.to_string();
        assert!(
            matches!(error, heap_sampler::Error::Write { .. }),
            "{error:?}"
        );
        assert!(
            message.contains(&path.display().to_string()),
            "names the path: {message}"
        );
        assert!(
            message.contains("writable directory"),
            "says what to do: {message}"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "keeps the I/O error"
        );
    }
    // Nothing was lost: the allocator samples on and the next dump works.
    let kept = vec![5u8; 4096];
    let v = common::at_function(
        &common::profile(),
        "unwritable_path_is_an_error_that_names_the_path",
    );
    assert!(v.inuse_space >= 4096);
    heap_sampler::write_profile(dir.join("heap.pb.gz")).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    drop(kept);
}
