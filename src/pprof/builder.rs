//! Builds a pprof [`Profile`] from a symbolized snapshot, as Go's `runtime/pprof` profileBuilder does: a string
//! table, functions deduplicated by name and file, one location per return address, mappings read once.

use std::collections::HashMap;
use std::io::{self, Write};

use prost::Message;
use prost::encoding::message;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use crate::labels::{self, LabelSet};
use crate::symbolize::symbols::{Frame, Resolved, ResolvedSample};

/// The four sample types, in the order of every sample's values.
pub(crate) const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut strings = Strings::default();
        strings.id("");
        strings
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), id);
        id
    }
}

/// What goes into a profile besides the samples.
pub(crate) struct Header<'a> {
    pub(crate) rate: usize,
    pub(crate) time_nanos: i64,
    pub(crate) comments: &'a [String],
}

/// Assembles the profile of the locations and mappings of `resolved` and of `samples` (its samples, or the
/// samples taken out of it so that the rest can be dropped before the profile is written). Values are
/// already unbiased estimates (as Go writes them); `bytes` is a numeric label with the size of the sample's
/// allocations, as Go's heap profiles carry, on the samples whose allocations all had one size (see
/// [`crate::table::buckets::Counts::block_size`]), and a sample's label set gives string labels (key and `str`), as Go's `pprof.Do`
/// labels give in CPU profiles.
pub(crate) fn build<'a>(
    resolved: &Resolved,
    samples: &'a [ResolvedSample],
    header: &Header<'_>,
) -> Dump<'a> {
    let mut strings = Strings::new();
    let sample_type = SAMPLE_TYPES
        .iter()
        .map(|(t, u)| ValueType {
            r#type: strings.id(t),
            unit: strings.id(u),
        })
        .collect();

    let mapping: Vec<Mapping> = resolved
        .mappings
        .iter()
        .zip(1..)
        .map(|(m, id)| Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: strings.id(&m.path),
            build_id: strings.id(&m.build_id),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_line_numbers,
        })
        .collect();

    let mut functions: Vec<Function> = Vec::new();
    // Keyed by the frame without its line: one Function per name, mangled name and file.
    let mut function_of: HashMap<Frame, u64> = HashMap::new();
    let mut function_id = |frame: &Frame, strings: &mut Strings| -> u64 {
        let key = Frame {
            line: 0,
            ..frame.clone()
        };
        *function_of.entry(key).or_insert_with(|| {
            let id = functions.len() as u64 + 1;
            functions.push(Function {
                id,
                name: strings.id(&frame.name),
                system_name: strings.id(&frame.system_name),
                filename: strings.id(&frame.file),
                start_line: 0,
            });
            id
        })
    };

    let location = resolved
        .locations
        .iter()
        .zip(1..)
        .map(|(loc, id)| Location {
            id,
            mapping_id: mapping
                .iter()
                .find(|m| m.memory_start <= loc.address && loc.address < m.memory_limit)
                .map_or(0, |m| m.id),
            address: loc.address,
            line: loc
                .frames
                .iter()
                .map(|f| Line {
                    function_id: function_id(f, &mut strings),
                    line: i64::from(f.line),
                    column: 0,
                })
                .collect(),
            is_folded: false,
        })
        .collect();

    // The string labels of each label set, in the order the samples first have them.
    let bytes_key = strings.id("bytes");
    let mut labels: HashMap<LabelSet, Vec<Label>> = HashMap::new();
    for s in samples {
        labels.entry(s.labels).or_insert_with(|| {
            labels::pairs(s.labels)
                .iter()
                .map(|(key, value)| Label {
                    key: strings.id(key),
                    str: strings.id(value),
                    num: 0,
                    num_unit: 0,
                })
                .collect()
        });
    }

    let comment = header.comments.iter().map(|c| strings.id(c)).collect();
    let period_type = Some(ValueType {
        r#type: strings.id("space"),
        unit: strings.id("bytes"),
    });
    let default_sample_type = strings.id("inuse_space");
    let profile = Profile {
        sample_type,
        mapping,
        location,
        function: functions,
        period_type,
        period: i64::try_from(header.rate).unwrap_or(i64::MAX),
        time_nanos: header.time_nanos,
        comment,
        default_sample_type,
        string_table: strings.table,
        ..Profile::default()
    };
    Dump {
        profile,
        samples,
        labels,
        bytes_key,
    }
}

/// A profile to encode: its message without the samples, and the samples, each encoded as its message only
/// when the profile is written (see [`Dump::write`]), so that the messages of all samples never exist at
/// once.
pub(crate) struct Dump<'a> {
    /// Everything but the samples.
    pub(crate) profile: Profile,
    samples: &'a [ResolvedSample],
    /// The string labels of each label set of the samples.
    labels: HashMap<LabelSet, Vec<Label>>,
    /// The string index of `bytes`, the key and unit of the samples' numeric label.
    bytes_key: i64,
}

/// How many bytes of encoded samples are gathered before they are written.
const CHUNK: usize = 32 << 10;

impl Dump<'_> {
    /// Writes the profile's encoding to `out`, a piece at a time: the sample types, the samples one by one,
    /// then the rest of the message. Fields come in the order of their numbers, as prost encodes a whole
    /// message, and the bytes are those of [`Profile::encode`] on the profile with its samples.
    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let header = self.profile.encode_to_vec();
        // Field 1 (`sample_type`) comes first in prost's encoding; the samples (field 2) go after it.
        let split = message::encoded_len_repeated(1, &self.profile.sample_type).min(header.len());
        let (sample_types, rest) = header.split_at(split);
        out.write_all(sample_types)?;
        let mut buf = Vec::with_capacity(CHUNK + (1 << 10));
        let mut sample = Sample::default();
        for s in self.samples {
            sample.location_id.clear();
            sample
                .location_id
                .extend(s.locations.iter().map(|&i| u64::from(i) + 1));
            sample.label.clear();
            if let Some(size) = s.counts.block_size() {
                sample.label.push(Label {
                    key: self.bytes_key,
                    str: 0,
                    num: size,
                    num_unit: self.bytes_key,
                });
            }
            if let Some(labels) = self.labels.get(&s.labels) {
                sample.label.extend_from_slice(labels);
            }
            sample.value.clear();
            sample.value.extend_from_slice(&s.counts.values());
            message::encode(2, &sample, &mut buf);
            if buf.len() >= CHUNK {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
        out.write_all(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::symbols::ResolvedLocation;
    use crate::table::buckets::{Counts, MIXED_SIZES};

    fn frame(name: &str, line: u32) -> Frame {
        Frame {
            name: name.into(),
            system_name: name.into(),
            file: "/src/app.rs".into(),
            line,
        }
    }

    #[test]
    fn samples_written_one_by_one_encode_the_whole_message() {
        let counts = |n: u128| Counts {
            alloc_objects: n << 32,
            alloc_space: (64 * n) << 32,
            inuse_objects: n << 32,
            inuse_space: (64 * n) << 32,
            // Every fifth sample is of a bucket of mixed sizes.
            size: if n.is_multiple_of(5) { MIXED_SIZES } else { 64 },
            ..Counts::default()
        };
        let labeled = LabelSet::new(&[("tenant", "builder-test")]);
        // Enough samples for several pieces.
        let samples = (0..5_000u32)
            .map(|i| ResolvedSample {
                locations: [i % 3, 2].into(),
                labels: if i % 2 == 0 { labeled } else { LabelSet::EMPTY },
                counts: counts(u128::from(i) + 1),
            })
            .collect();
        let resolved = Resolved {
            locations: vec![
                ResolvedLocation {
                    address: 0x1000,
                    frames: vec![frame("app::load", 10), frame("app::run", 20)],
                },
                ResolvedLocation {
                    address: 0x2000,
                    frames: vec![frame("app::parse", 30)],
                },
                ResolvedLocation {
                    address: 0x3000,
                    frames: vec![frame("app::main", 40)],
                },
            ],
            samples,
            ..Resolved::default()
        };
        let comments = ["a comment".to_string()];
        let header = Header {
            rate: 4096,
            time_nanos: 7,
            comments: &comments,
        };
        let dump = build(&resolved, &resolved.samples, &header);
        let mut bytes = Vec::new();
        dump.write(&mut bytes).unwrap();

        let profile = Profile::decode(bytes.as_slice()).unwrap();
        assert_eq!(profile.sample.len(), 5_000);
        let string = |i: i64| profile.string_table[i as usize].as_str();
        let third = &profile.sample[3];
        assert_eq!(third.location_id, [1, 3]);
        assert_eq!(third.value, [4, 256, 4, 256]);
        let labels: Vec<(&str, &str, i64)> = third
            .label
            .iter()
            .map(|l| (string(l.key), string(l.str), l.num))
            .collect();
        assert_eq!(labels, [("bytes", "", 64)]);
        let labels: Vec<(&str, &str)> = profile.sample[4]
            .label
            .iter()
            .map(|l| (string(l.key), string(l.str)))
            .collect();
        assert_eq!(labels, [("tenant", "builder-test")], "mixed sizes: no size");
        let labels: Vec<(&str, &str)> = profile.sample[6]
            .label
            .iter()
            .map(|l| (string(l.key), string(l.str)))
            .collect();
        assert_eq!(labels, [("bytes", ""), ("tenant", "builder-test")]);
        assert_eq!(profile.location.len(), 3);
        assert_eq!(string(profile.comment[0]), "a comment");
        // In field order, as prost encodes the message with all of its samples.
        assert_eq!(profile.encode_to_vec(), bytes);
    }
}
