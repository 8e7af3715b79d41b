//! Builds a pprof [`Profile`] from a symbolized snapshot, as Go's `runtime/pprof` profileBuilder does: a string
//! table, functions deduplicated by name and file, one location per return address, mappings read once.

use std::collections::HashMap;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use super::symbols::{Frame, Resolved};
use crate::labels::{self, LabelSet};

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

/// Assembles the profile. Values are already unbiased estimates (as Go writes them); `bytes` is a numeric
/// label with the sample's average allocation size, as Go's heap profiles carry, and a sample's label set
/// gives string labels (key and `str`), as Go's `pprof.Do` labels give in CPU profiles.
pub(crate) fn build(resolved: &Resolved, header: &Header<'_>) -> Profile {
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

    let bytes_key = strings.id("bytes");
    let mut string_labels: HashMap<LabelSet, Vec<Label>> = HashMap::new();
    let sample = resolved
        .samples
        .iter()
        .map(|s| {
            let mut label = vec![Label {
                key: bytes_key,
                str: 0,
                num: s.counts.average_size(),
                num_unit: bytes_key,
            }];
            label.extend_from_slice(string_labels.entry(s.labels).or_insert_with(|| {
                labels::pairs(s.labels)
                    .iter()
                    .map(|(key, value)| Label {
                        key: strings.id(key),
                        str: strings.id(value),
                        num: 0,
                        num_unit: 0,
                    })
                    .collect()
            }));
            Sample {
                location_id: s.locations.iter().map(|&i| i as u64 + 1).collect(),
                label,
                value: s.counts.values().to_vec(),
            }
        })
        .collect();

    let comment = header.comments.iter().map(|c| strings.id(c)).collect();
    let period_type = Some(ValueType {
        r#type: strings.id("space"),
        unit: strings.id("bytes"),
    });
    let default_sample_type = strings.id("inuse_space");
    Profile {
        sample_type,
        sample,
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
    }
}
