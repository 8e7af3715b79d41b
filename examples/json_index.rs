//! A realistic workload: JSON documents parsed with serde_json and indexed into maps, as a small search or
//! catalogue service would hold them. Writes `json_index.pb.gz` and prints the text report.
//!
//! Run with `cargo run --release --example json_index [documents]`, then e.g.
//! `go tool pprof -top json_index.pb.gz` or `go tool pprof -http=: json_index.pb.gz`. Also writes the
//! in-use folded stacks to `json_index.folded`, and with `--features flamegraph` a flamegraph of them to
//! `json_index.svg`.

use std::alloc::System;
use std::collections::{BTreeMap, HashMap};

use heap_sampler::SamplingAllocator;
use serde_json::Value;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];

/// A deterministic document: an id, a name, tags, a nested address and a list of line items.
fn document_text(i: usize) -> String {
    let word = |k: usize| WORDS[(i.wrapping_mul(31).wrapping_add(k * 7)) % WORDS.len()];
    let items: Vec<String> = (0..(i % 7 + 1))
        .map(|k| {
            format!(
                r#"{{"sku":"{}-{k}","qty":{},"price":{}.{:02}}}"#,
                word(k),
                k + 1,
                i % 100,
                k * 13 % 100
            )
        })
        .collect();
    format!(
        r#"{{"id":{i},"name":"{} {} {i}","tags":["{}","{}","{}"],"address":{{"city":"{}","zip":"{:05}"}},"items":[{}],"note":"{}"}}"#,
        word(1),
        word(2),
        word(3),
        word(4),
        word(5),
        word(6),
        i * 17 % 100_000,
        items.join(","),
        word(8).repeat(i % 13 + 1),
    )
}

/// The index a service would keep: documents by id, ids by tag, ids by city, and names in order.
#[derive(Default)]
struct Index {
    documents: HashMap<u64, Value>,
    by_tag: HashMap<String, Vec<u64>>,
    by_city: HashMap<String, Vec<u64>>,
    names: BTreeMap<String, u64>,
}

impl Index {
    #[inline(never)]
    fn insert(&mut self, doc: Value) {
        let id = doc["id"].as_u64().unwrap_or_default();
        for tag in doc["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            self.by_tag.entry(tag.to_string()).or_default().push(id);
        }
        if let Some(city) = doc["address"]["city"].as_str() {
            self.by_city.entry(city.to_string()).or_default().push(id);
        }
        if let Some(name) = doc["name"].as_str() {
            self.names.insert(name.to_string(), id);
        }
        self.documents.insert(id, doc);
    }
}

#[inline(never)]
fn parse(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let documents: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("documents must be a whole number, got {arg:?}: {e}"))?,
        None => 50_000,
    };
    let mut index = Index::default();
    for i in 0..documents {
        let text = document_text(i);
        index.insert(parse(&text)?);
    }
    // Serve some queries: transient allocations that show in alloc_space but not in inuse_space.
    let mut hits = 0usize;
    for word in WORDS {
        let ids = index.by_tag.get(*word).map_or(&[][..], Vec::as_slice);
        let rendered: Vec<String> = ids
            .iter()
            .take(1000)
            .filter_map(|id| index.documents.get(id))
            .map(Value::to_string)
            .collect();
        hits += rendered.len();
    }
    let path = "json_index.pb.gz";
    heap_sampler::write_profile(path)?;
    std::fs::write(
        "json_index.folded",
        heap_sampler::folded_stacks(heap_sampler::SampleType::InuseSpace)?,
    )?;
    #[cfg(feature = "flamegraph")]
    std::fs::write(
        "json_index.svg",
        heap_sampler::flamegraph_svg(heap_sampler::SampleType::InuseSpace)?,
    )?;
    println!("{}", heap_sampler::report(15)?);
    println!(
        "indexed {} documents ({} tags, {} cities, {} names), {hits} query hits; wrote {path}",
        index.documents.len(),
        index.by_tag.len(),
        index.by_city.len(),
        index.names.len()
    );
    Ok(())
}
