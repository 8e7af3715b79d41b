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

#[test]
fn endpoints_without_the_allocator_answer_500_with_the_fix() {
    let response = heap_sampler::http::handle("/debug/pprof/heap", "");
    assert_eq!(
        (response.status, response.content_type),
        (500, "text/plain; charset=utf-8")
    );
    let body = String::from_utf8(response.body).unwrap();
    assert!(body.contains("#[global_allocator]"), "{body}");
    assert!(heap_sampler::folded_stacks(heap_sampler::SampleType::InuseSpace).is_err());
    // Said at once, not after the window.
    assert!(heap_sampler::dump_delta_profile(std::time::Duration::from_secs(3600)).is_err());
    assert_eq!(
        heap_sampler::http::handle("/debug/pprof/allocs", "seconds=3600").status,
        500
    );
}
