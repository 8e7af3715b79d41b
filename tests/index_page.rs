//! The `/debug/pprof/` page, through the handler, for a known profile in exact mode (rate 1): a well-formed
//! document whose table shows the program's sites with their exact figures, whose function names with `<`,
//! `>` and `&` are escaped, and which has no chart where no server records the bytes in use.

use std::alloc::System;

use heap_sampler::SamplingAllocator;
use heap_sampler::http::handle;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// Holds 100 blocks of 10,000 bytes: 1,000,000 bytes in use.
#[inline(never)]
fn hold_blocks(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..100 {
        kept.push(std::hint::black_box(vec![1u8; 10_000]));
    }
}

/// A type whose method's symbol names it with its parameter: `<index_page::Holder<&str> as …>::keep`.
struct Holder<T>(T);

trait Keep {
    fn keep(&self, kept: &mut Vec<Vec<u8>>);
}

impl Keep for Holder<&str> {
    /// Holds 50 blocks of 12,000 bytes: 600,000 bytes in use.
    #[inline(never)]
    fn keep(&self, kept: &mut Vec<Vec<u8>>) {
        for _ in 0..50 {
            kept.push(std::hint::black_box(self.0.repeat(12_000)).into_bytes());
        }
    }
}

/// Sets exact mode and holds the blocks once per test binary.
fn workload() -> &'static [Vec<u8>] {
    static KEPT: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    KEPT.get_or_init(|| {
        heap_sampler::set_sample_rate(1);
        let mut kept = Vec::with_capacity(150);
        hold_blocks(&mut kept);
        Holder("x").keep(&mut kept);
        kept
    })
}

fn page() -> String {
    let response = handle("/debug/pprof/", "");
    assert_eq!(
        (response.status, response.content_type),
        (200, "text/html; charset=utf-8")
    );
    String::from_utf8(response.body).expect("UTF-8 page")
}

fn parse(html: &str) -> roxmltree::Document<'_> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{html}"))
}

fn text(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect()
}

/// The rows of the sites' table, each as the text of its cells.
fn rows(doc: &roxmltree::Document<'_>) -> Vec<Vec<String>> {
    doc.descendants()
        .filter(|n| n.has_tag_name("tr") && n.parent().is_some_and(|p| p.has_tag_name("tbody")))
        .filter(|row| {
            row.ancestors()
                .any(|a| a.attribute("class") == Some("sites"))
        })
        .map(|row| {
            row.children()
                .filter(|c| c.has_tag_name("td"))
                .map(text)
                .collect()
        })
        .collect()
}

#[test]
fn the_page_shows_the_top_sites_exactly_and_escapes_their_names() {
    let kept = workload();
    let html = page();
    let doc = parse(&html);
    assert_eq!(doc.root_element().tag_name().name(), "html");
    assert_eq!(
        doc.root_element().tag_name().namespace(),
        Some("http://www.w3.org/1999/xhtml")
    );
    let rows = rows(&doc);
    assert!(!rows.is_empty() && rows.len() <= 10, "{rows:?}");
    // Columns: in use, its bar, in-use objects, allocated, allocated objects, site.
    let held = rows
        .iter()
        .find(|r| r[5].contains("index_page::hold_blocks"))
        .unwrap_or_else(|| panic!("no hold_blocks row in {rows:#?}"));
    assert_eq!(
        [&held[0], &held[2], &held[3], &held[4]],
        ["976.56 KiB", "100", "976.56 KiB", "100"]
    );
    let kept_row = rows
        .iter()
        .find(|r| r[5].contains("as index_page::Keep>::keep"))
        .unwrap_or_else(|| panic!("no Keep::keep row in {rows:#?}"));
    assert_eq!(
        [&kept_row[0], &kept_row[2], &kept_row[3], &kept_row[4]],
        ["585.94 KiB", "50", "585.94 KiB", "50"]
    );
    // The name as the program has it, with `<`, `>` and `&`, reaches the reader intact: it was escaped.
    let name = kept_row[5].split("index_page.rs").next().unwrap();
    assert!(
        name.starts_with("<index_page::Holder<&str> as index_page::Keep>::keep"),
        "{name}"
    );
    assert!(
        html.contains("&lt;index_page::<wbr/>Holder&lt;&amp;str&gt; as"),
        "{html}"
    );
    // Exact mode: no error bars.
    assert!(rows.iter().all(|r| !r[0].contains('±')), "{rows:?}");
    assert!(html.contains("every allocation is recorded"));
    assert_eq!(kept.len(), 150);
}

#[test]
fn without_a_server_the_page_has_no_chart_and_links_every_view() {
    workload();
    let html = page();
    let doc = parse(&html);
    assert!(
        doc.descendants()
            .all(|n| n.attribute("class") != Some("chart")),
        "{html}"
    );
    assert!(
        html.contains("No chart: fewer than two readings of the bytes in use yet."),
        "{html}"
    );
    let links: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.attribute("href"))
        .collect();
    for link in [
        "heap?format=svg",
        "allocs?format=svg",
        "peak?format=svg",
        "heap",
        "allocs",
        "heap?debug=1",
        "allocs?debug=1",
    ] {
        assert!(links.contains(&link), "{link} in {links:?}");
    }
    // A query is ignored, as Go's index ignores it.
    assert_eq!(handle("/debug/pprof/", "debug=x&seconds=-1").status, 200);
}
