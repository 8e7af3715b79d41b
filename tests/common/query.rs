//! Reading profiles: decoding them, and summing their samples by function, source line or label.

use std::collections::HashMap;
use std::io::Read;

use heap_sampler::proto::Profile;
use prost::Message;

/// Gunzips and decodes a profile written by `dump_profile`.
pub fn decode(gzipped: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .expect("profile is gzip");
    Profile::decode(raw.as_slice()).expect("profile decodes as profile.proto")
}

/// Dumps and decodes the current profile.
pub fn profile() -> Profile {
    decode(&heap_sampler::dump_profile().expect("dump_profile"))
}

/// The four values of a sample, named.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Values {
    pub alloc_objects: i64,
    pub alloc_space: i64,
    pub inuse_objects: i64,
    pub inuse_space: i64,
}

impl Values {
    fn add(&mut self, v: &[i64]) {
        self.alloc_objects += v[0];
        self.alloc_space += v[1];
        self.inuse_objects += v[2];
        self.inuse_space += v[3];
    }

    /// `self − before`, for the cumulative `alloc_*` values between two dumps.
    pub fn since(&self, before: &Values) -> Values {
        Values {
            alloc_objects: self.alloc_objects - before.alloc_objects,
            alloc_space: self.alloc_space - before.alloc_space,
            inuse_objects: self.inuse_objects - before.inuse_objects,
            inuse_space: self.inuse_space - before.inuse_space,
        }
    }
}

pub fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

fn function_matches(name: &str, function: &str) -> bool {
    name == function || name.ends_with(&format!("::{function}"))
}

/// For each sample whose stack passes through `function` (a path suffix such as `foo` or `tests::foo`), the
/// line of its innermost frame in that function, and the sample.
pub fn samples_through<'a>(
    p: &'a Profile,
    function: &str,
) -> Vec<(i64, &'a heap_sampler::proto::Sample)> {
    let functions: HashMap<u64, &str> = p
        .function
        .iter()
        .map(|f| (f.id, string(p, f.name)))
        .collect();
    let locations: HashMap<u64, _> = p.location.iter().map(|l| (l.id, l)).collect();
    p.sample
        .iter()
        .filter_map(|sample| {
            let line = sample
                .location_id
                .iter()
                .flat_map(|id| locations[id].line.iter())
                .find_map(|line| {
                    function_matches(functions[&line.function_id], function).then_some(line.line)
                })?;
            Some((line, sample))
        })
        .collect()
}

/// For each sample whose stack passes through `function` (see [`samples_through`]), the line of its
/// innermost frame in that function, and the sample's values.
pub fn samples_at(p: &Profile, function: &str) -> Vec<(i64, Vec<i64>)> {
    samples_through(p, function)
        .into_iter()
        .map(|(line, sample)| (line, sample.value.clone()))
        .collect()
}

/// Values summed by the line of `function` that the stacks pass through.
pub fn by_line(p: &Profile, function: &str) -> HashMap<i64, Values> {
    let mut lines: HashMap<i64, Values> = HashMap::new();
    for (line, value) in samples_at(p, function) {
        lines.entry(line).or_default().add(&value);
    }
    lines
}

/// Values summed over every stack that passes through `function`.
pub fn at_function(p: &Profile, function: &str) -> Values {
    by_line(p, function)
        .values()
        .fold(Values::default(), |mut acc, v| {
            acc.add(&[
                v.alloc_objects,
                v.alloc_space,
                v.inuse_objects,
                v.inuse_space,
            ]);
            acc
        })
}

/// The string labels of a sample, as `(key, value)`.
pub fn labels_of<'a>(
    p: &'a Profile,
    sample: &heap_sampler::proto::Sample,
) -> Vec<(&'a str, &'a str)> {
    sample
        .label
        .iter()
        .filter(|l| l.str != 0)
        .map(|l| (string(p, l.key), string(p, l.str)))
        .collect()
}

/// Values summed by the value of string label `key`, over the samples that carry it.
pub fn by_label(p: &Profile, key: &str) -> HashMap<String, Values> {
    let mut out: HashMap<String, Values> = HashMap::new();
    for sample in &p.sample {
        for (k, v) in labels_of(p, sample) {
            if k == key {
                out.entry(v.to_string()).or_default().add(&sample.value);
            }
        }
    }
    out
}
