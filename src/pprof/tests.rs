//! The profile builder as a pure function, as Go's `runtime/pprof/protomem_test.go` tests its heap profile
//! writer: made-up stacks of made-up return addresses, in made-up mappings, are symbolized by a made-up
//! lookup (no binary is read), rendered, decoded with prost and compared field by field.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::GzDecoder;
use prost::Message;

use super::proto::{Profile, Sample};
use crate::labels::LabelSet;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::{HeapSnapshot, Origin};
use crate::symbolize::mappings::MappingInfo;
use crate::symbolize::symbols::{Cache, Frame, Resolved, Resolver};
use crate::table::buckets::{Counts, Snapshot};

/// Return addresses (one past a call) in the program's mapping.
const LOAD: usize = 0x40_1000;
const MAIN: usize = 0x40_2000;
const PUSH: usize = 0x40_3000;
const SHIM: usize = 0x40_4000;
const FILL: usize = 0x40_5000;
/// A return address in a library whose symbols are unknown.
const LIBC: usize = 0x7f00_1000;

fn frame(name: &str, file: &str, line: u32) -> Frame {
    Frame {
        name: name.into(),
        system_name: format!("_ZN{name}E").into(),
        file: file.into(),
        line,
    }
}

/// The made-up symbolizer: the frames at each return address, innermost first.
fn frames_at(ip: usize) -> Vec<Frame> {
    let profiler =
        "<heap_sampler::SamplingAllocator<A> as core::alloc::global::GlobalAlloc>::alloc";
    match ip {
        // `app::parse` inlined into `app::load`.
        LOAD => vec![
            frame("app::parse", "/src/parse.rs", 12),
            frame("app::load", "/src/load.rs", 30),
        ],
        MAIN => vec![frame("app::main", "/src/main.rs", 5)],
        PUSH => vec![frame(
            "alloc::raw_vec::RawVec<T>::grow_one",
            "/rustc/0123/library/alloc/src/raw_vec/mod.rs",
            400,
        )],
        // The profiler's allocator and the allocator shim.
        SHIM => vec![frame(profiler, "", 0), frame("__rust_alloc", "", 0)],
        // The allocator and its shim inlined into the program's function.
        FILL => vec![
            frame(profiler, "", 0),
            frame("__rust_alloc", "", 0),
            frame("app::fill", "/src/fill.rs", 8),
        ],
        _ => Vec::new(),
    }
}

fn mapping(start: u64, limit: u64, path: &str, build_id: &str) -> MappingInfo {
    MappingInfo {
        start,
        limit,
        file_offset: 0,
        path: path.to_string(),
        is_main: false,
        build_id: build_id.to_string(),
        vaddr_minus_offset: 0,
        has_functions: false,
        has_filenames: false,
        has_line_numbers: false,
    }
}

/// Counts of whole objects and bytes: `[alloc_objects, alloc_space, inuse_objects, inuse_space]`, of
/// allocations of one size.
fn counts([ao, asp, io, isp]: [u128; 4]) -> Counts {
    Counts {
        alloc_objects: ao << 32,
        alloc_space: asp << 32,
        inuse_objects: io << 32,
        inuse_space: isp << 32,
        size: (asp / ao) as u64,
        ..Counts::default()
    }
}

/// The made-up buckets: stacks innermost first, the first led by the profiler's and the standard library's
/// frames, the second the same stack without them.
fn buckets() -> Snapshot {
    let tenant = LabelSet::new(&[("tenant", "protomem")]);
    let mut snapshot = Snapshot::default();
    for (frames, labels, values) in [
        (
            &[SHIM, PUSH, LOAD, MAIN][..],
            LabelSet::EMPTY,
            [4, 256, 2, 128],
        ),
        (&[LOAD, MAIN], LabelSet::EMPTY, [1, 64, 1, 64]),
        (&[LOAD, MAIN], tenant, [2, 2048, 0, 0]),
        (&[LIBC, MAIN], LabelSet::EMPTY, [1, 32, 1, 32]),
        (&[FILL, MAIN], LabelSet::EMPTY, [1, 16, 0, 0]),
    ] {
        snapshot.push(frames, &Snapshot::bucket(labels, counts(values)));
    }
    snapshot
}

/// The buckets symbolized with the made-up mappings and frames.
fn resolve(keep_std: bool) -> Resolved {
    let buckets = buckets();
    let lookup = |cache: &mut Cache, ips: &[usize], _: &[MappingInfo]| {
        for &ip in ips {
            cache.insert(ip, frames_at(ip));
        }
    };
    let resolver = Resolver {
        mappings: vec![
            mapping(0x40_0000, 0x50_0000, "/opt/app/server", "a1b2c3"),
            mapping(0x7f00_0000, 0x7f10_0000, "/usr/lib/libc.so.6", "d4e5"),
        ],
        symbolize: true,
        keep_std,
        lookup: &lookup,
    };
    let guard = Guard::inside();
    resolver.resolve(&guard, &mut Cache::default(), buckets.len(), &mut |f| {
        f(&buckets)
    })
}

fn snapshot(origin: Origin, keep_std: bool) -> HeapSnapshot {
    HeapSnapshot {
        resolved: resolve(keep_std),
        origin,
        rate: 4096,
        time_nanos: 1_700_000_000_123_456_789,
        default_sample_type: SampleType::InuseSpace,
    }
}

fn decode(gzipped: &[u8]) -> Profile {
    let mut bytes = Vec::new();
    GzDecoder::new(gzipped).read_to_end(&mut bytes).unwrap();
    Profile::decode(bytes.as_slice()).unwrap()
}

/// A decoded mapping: id, start, limit, file name, build ID, and its four `has_*` flags.
type MappingFields<'a> = (u64, u64, u64, &'a str, &'a str, [bool; 4]);

/// A decoded profile read by name rather than by string index.
struct Named<'a>(&'a Profile);

impl Named<'_> {
    fn string(&self, index: i64) -> &str {
        &self.0.string_table[usize::try_from(index).unwrap()]
    }

    /// Each line of the location with id `id`: (function name, system name, file, line).
    fn lines(&self, id: u64) -> Vec<(&str, &str, &str, i64)> {
        let location = &self.0.location[usize::try_from(id - 1).unwrap()];
        assert_eq!(location.id, id);
        location
            .line
            .iter()
            .map(|line| {
                let function = &self.0.function[usize::try_from(line.function_id - 1).unwrap()];
                assert_eq!(function.id, line.function_id);
                (
                    self.string(function.name),
                    self.string(function.system_name),
                    self.string(function.filename),
                    line.line,
                )
            })
            .collect()
    }

    /// The innermost-first function names of a sample's stack.
    fn stack(&self, sample: &Sample) -> Vec<&str> {
        sample
            .location_id
            .iter()
            .flat_map(|&id| self.lines(id).into_iter().map(|(name, ..)| name))
            .collect()
    }

    /// A sample's labels: (key, string value, number, number unit).
    fn labels(&self, sample: &Sample) -> Vec<(&str, &str, i64, &str)> {
        sample
            .label
            .iter()
            .map(|l| {
                (
                    self.string(l.key),
                    self.string(l.str),
                    l.num,
                    self.string(l.num_unit),
                )
            })
            .collect()
    }
}

#[test]
fn made_up_stacks_become_the_profile_field_by_field() {
    let profile = decode(&snapshot(Origin::Current, false).to_pprof().unwrap());
    let p = Named(&profile);

    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (p.string(t.r#type), p.string(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
    );
    let period_type = profile.period_type.as_ref().unwrap();
    assert_eq!(
        (p.string(period_type.r#type), p.string(period_type.unit)),
        ("space", "bytes")
    );
    assert_eq!(profile.period, 4096);
    assert_eq!(profile.time_nanos, 1_700_000_000_123_456_789);
    assert_eq!(profile.duration_nanos, 0);
    assert_eq!(p.string(profile.default_sample_type), "inuse_space");
    assert_eq!(p.string(0), "");

    // Mappings in order, the program's fully symbolized, the library's not at all.
    let mappings: Vec<MappingFields<'_>> = profile
        .mapping
        .iter()
        .map(|m| {
            (
                m.id,
                m.memory_start,
                m.memory_limit,
                p.string(m.filename),
                p.string(m.build_id),
                [
                    m.has_functions,
                    m.has_filenames,
                    m.has_line_numbers,
                    m.has_inline_frames,
                ],
            )
        })
        .collect();
    assert_eq!(
        mappings,
        [
            (
                1,
                0x40_0000,
                0x50_0000,
                "/opt/app/server",
                "a1b2c3",
                [true; 4]
            ),
            (
                2,
                0x7f00_0000,
                0x7f10_0000,
                "/usr/lib/libc.so.6",
                "d4e5",
                [false; 4]
            ),
        ]
    );

    // One location per return address that remains once the profiler's and the standard library's leading
    // frames are cut, at the call instruction (one byte before the return address), in order of first use.
    let locations: Vec<(u64, u64, u64)> = profile
        .location
        .iter()
        .map(|l| (l.id, l.mapping_id, l.address))
        .collect();
    assert_eq!(
        locations,
        [
            (1, 1, LOAD as u64 - 1),
            (2, 1, MAIN as u64 - 1),
            (3, 2, LIBC as u64 - 1),
            (4, 1, FILL as u64 - 1),
        ]
    );
    // Inlined frames are lines of one location, innermost first; an unnamed address has none; the allocator
    // inlined into the program's function is cut from its location.
    assert_eq!(
        p.lines(1),
        [
            ("app::parse", "_ZNapp::parseE", "/src/parse.rs", 12),
            ("app::load", "_ZNapp::loadE", "/src/load.rs", 30),
        ]
    );
    assert_eq!(
        p.lines(2),
        [("app::main", "_ZNapp::mainE", "/src/main.rs", 5)]
    );
    assert!(p.lines(3).is_empty());
    assert_eq!(
        p.lines(4),
        [("app::fill", "_ZNapp::fillE", "/src/fill.rs", 8)]
    );
    // One function per name and file, ids dense from 1.
    let functions: Vec<(u64, &str)> = profile
        .function
        .iter()
        .map(|f| (f.id, p.string(f.name)))
        .collect();
    assert_eq!(
        functions,
        [
            (1, "app::parse"),
            (2, "app::load"),
            (3, "app::main"),
            (4, "app::fill"),
        ]
    );

    // The first two buckets are one stack once cut: one sample, their counts added. The same stack under
    // labels is another sample.
    let samples: Vec<(Vec<u64>, Vec<i64>)> = profile
        .sample
        .iter()
        .map(|s| (s.location_id.clone(), s.value.clone()))
        .collect();
    assert_eq!(
        samples,
        [
            (vec![1, 2], vec![5, 320, 3, 192]),
            (vec![1, 2], vec![2, 2048, 0, 0]),
            (vec![3, 2], vec![1, 32, 1, 32]),
            (vec![4, 2], vec![1, 16, 0, 0]),
        ]
    );
    assert_eq!(
        p.stack(&profile.sample[0]),
        ["app::parse", "app::load", "app::main"]
    );
    // Each sample's allocation size as Go's `bytes` label (each sample's allocations had one size), then
    // its string labels.
    assert_eq!(p.labels(&profile.sample[0]), [("bytes", "", 64, "bytes")]);
    assert_eq!(
        p.labels(&profile.sample[1]),
        [("bytes", "", 1024, "bytes"), ("tenant", "protomem", 0, "")]
    );

    // Who wrote it, how to read the values' error, then what the symbolizer noted.
    let comments: Vec<&str> = profile.comment.iter().map(|&c| p.string(c)).collect();
    assert_eq!(comments.len(), 3, "{comments:?}");
    assert_eq!(
        comments[0],
        format!("heap-sampler {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        comments[1].starts_with(
            "values are unbiased estimates from allocations sampled every 4096 bytes on average: a \
             value of B bytes has a relative standard error of at most sqrt(4096 / B)"
        ),
        "{}",
        comments[1]
    );
    assert!(
        comments[2]
            .starts_with("/usr/lib/libc.so.6 (build ID d4e5): no symbols for 1 of 1 addresses"),
        "{}",
        comments[2]
    );
}

#[test]
fn kept_standard_library_frames_stay_and_the_profilers_still_go() {
    let profile = decode(&snapshot(Origin::Current, true).to_pprof().unwrap());
    let p = Named(&profile);
    let stacks: Vec<Vec<&str>> = profile.sample.iter().map(|s| p.stack(s)).collect();
    assert_eq!(
        stacks[0],
        [
            "alloc::raw_vec::RawVec<T>::grow_one",
            "app::parse",
            "app::load",
            "app::main"
        ]
    );
    assert_eq!(stacks[1], ["app::parse", "app::load", "app::main"]);
    assert!(
        stacks
            .iter()
            .flatten()
            .all(|f| !f.contains("heap_sampler") && !f.starts_with("__rust")),
        "{stacks:?}"
    );
}

#[test]
fn a_delta_and_a_peak_carry_their_window_and_their_comments() {
    let delta = snapshot(
        Origin::Delta {
            duration_nanos: 30_000_000_000,
        },
        false,
    )
    .with_default_sample_type(SampleType::AllocSpace);
    let profile = decode(&delta.to_pprof().unwrap());
    assert_eq!(profile.duration_nanos, 30_000_000_000);
    assert_eq!(
        Named(&profile).string(profile.default_sample_type),
        "alloc_space"
    );

    let peak = snapshot(
        Origin::Peak {
            inuse_bytes: 3 << 20,
            highest: 4 << 20,
        },
        false,
    );
    let profile = decode(&peak.to_pprof().unwrap());
    let p = Named(&profile);
    let comments: Vec<&str> = profile.comment.iter().map(|&c| p.string(c)).collect();
    assert!(
        comments[2].starts_with("peak heap profile:"),
        "{comments:?}"
    );
    assert_eq!(
        comments[3],
        "peak: 3145728 bytes (3.00 MiB) in use at 1700000000.123456789 s since the Unix epoch"
    );
    assert!(
        comments[4].starts_with("highest estimated in-use bytes seen: 4194304;"),
        "{comments:?}"
    );
    assert_eq!(profile.time_nanos, 1_700_000_000_123_456_789);
}

#[test]
fn one_snapshot_rendered_several_ways_agrees_on_totals() {
    let snapshot = snapshot(Origin::Current, false);
    let mut gzipped = Vec::new();
    snapshot.write_pprof(&mut gzipped).unwrap();
    let profile = decode(&gzipped);
    assert_eq!(
        snapshot.to_pprof().unwrap(),
        gzipped,
        "the same bytes twice"
    );

    let sites = snapshot.sites();
    for t in SampleType::ALL {
        let pprof: i64 = profile.sample.iter().map(|s| s.value[t.index()]).sum();
        let folded: i64 = snapshot
            .folded_stacks(t)
            .lines()
            .map(|line| line.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
            .sum();
        let by_site: i64 = sites
            .iter()
            .map(|s| match t {
                SampleType::AllocObjects => s.alloc_objects,
                SampleType::AllocSpace => s.alloc_space,
                SampleType::InuseObjects => s.inuse_objects,
                SampleType::InuseSpace => s.inuse_space,
            })
            .sum();
        assert_eq!((pprof, folded, by_site), (pprof, pprof, pprof), "{t}");
    }
    assert_eq!(
        snapshot.folded_stacks(SampleType::InuseSpace),
        "app::main;0x7f000fff 32\napp::main;app::load;app::parse 192\n"
    );
    let named: HashMap<&str, i64> = sites
        .iter()
        .map(|s| (s.function.as_str(), s.alloc_space))
        .collect();
    assert_eq!(
        named,
        HashMap::from([("app::parse", 2368), ("0x7f000fff", 32), ("app::fill", 16)])
    );
    let report = snapshot.report(1);
    assert!(report.contains("app::parse (parse.rs:12)"), "{report}");
    assert!(report.contains("... 2 more sites"), "{report}");
}
