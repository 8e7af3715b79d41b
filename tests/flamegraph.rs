//! Flamegraph SVGs (feature `flamegraph`): well-formed XML whose frames name the allocation sites with their
//! exact values (exact mode), for inuse_space and alloc_space, from the library and from the handler.

mod common;

use std::alloc::System;

use heap_sampler::{SampleType, SamplingAllocator};

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Holds 100 blocks of 10,000 bytes.
#[inline(never)]
fn hold_blocks(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        kept.push(std::hint::black_box(vec![1u8; 10_000]));
    }
}

/// Allocates and frees 400 blocks of 5,000 bytes.
#[inline(never)]
fn churn() {
    for _ in 0..400 {
        std::hint::black_box(vec![2u8; 5_000]);
    }
}

/// The tooltips of the SVG's frames (`function (N bytes, P%)`), after checking that the document is
/// well-formed XML with an `svg` root.
fn frame_titles(svg: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(svg).expect("UTF-8 SVG");
    // inferno's SVG declares its DTD.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(str::to_string))
        .collect()
}

#[test]
fn flamegraphs_are_well_formed_and_name_the_sites() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut kept = Vec::with_capacity(100);
    hold_blocks(&mut kept);
    churn();

    let inuse = frame_titles(&heap_sampler::flamegraph_svg(SampleType::InuseSpace).unwrap());
    assert!(
        inuse
            .iter()
            .any(|t| t.starts_with("flamegraph::hold_blocks (1,000,000 bytes")),
        "{inuse:#?}"
    );
    assert!(
        !inuse.iter().any(|t| t.contains("flamegraph::churn")),
        "nothing of churn is in use"
    );

    let allocs = heap_sampler::http::handle("/debug/pprof/allocs", "format=svg");
    assert_eq!((allocs.status, allocs.content_type), (200, "image/svg+xml"));
    let allocated = frame_titles(&allocs.body);
    assert!(
        allocated
            .iter()
            .any(|t| t.starts_with("flamegraph::churn (2,000,000 bytes")),
        "{allocated:#?}"
    );
    assert!(
        allocated
            .iter()
            .any(|t| t.starts_with("flamegraph::hold_blocks (1,000,000 bytes")),
        "{allocated:#?}"
    );
    drop(kept);
}
