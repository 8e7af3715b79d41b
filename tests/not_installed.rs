//! Without `SamplingAllocator` as the global allocator, dumping fails with an error that says how to fix it.

#[test]
fn dumping_without_the_allocator_installed_says_how_to_install_it() {
    let error = heap_sampler::dump_profile().expect_err("no allocator installed");
    assert!(matches!(error, heap_sampler::Error::NotInstalled));
    let message = error.to_string();
    assert!(
        message.contains("#[global_allocator]") && message.contains("SamplingAllocator"),
        "{message}"
    );
    assert!(heap_sampler::report(10).is_err());
    assert!(heap_sampler::write_profile(std::env::temp_dir().join("never-written.pb.gz")).is_err());
    // The rest of the API is harmless without it.
    heap_sampler::set_sample_rate(1);
    assert_eq!(heap_sampler::sample_rate(), 1);
    assert_eq!(heap_sampler::stats().samples, 0);
}
