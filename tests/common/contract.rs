//! The pprof contract (DESIGN.md §5): every rule a decoded profile can show, and the profiler's frames kept
//! out of its samples.

use std::collections::HashSet;

use heap_sampler::proto::Profile;

use super::query::string;

/// The profiler's modules that run inside the allocator: sampling, capturing stacks, recording in the
/// tables. The rest of `heap_sampler` may be a sample's caller: the program calls it and it calls the
/// program back (a closure given to `with_labels`, a `labeled` future, decoding its `proto` types).
const ALLOCATOR_MODULES: &[&str] = &["allocator", "sampler", "stack", "table"];

/// Whether the profiler trims frame `name` off the leaf end of stacks
/// ([`heap_sampler::PROFILER_FRAME_PREFIXES`]): no sample may lead with it.
fn trimmed(name: &str) -> bool {
    heap_sampler::PROFILER_FRAME_PREFIXES
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether frame `name` is of the allocation path, which never calls the program: then it may be nowhere in
/// a sample, or the profiler's own memory was sampled. Of the frames the profiler trims, those of its
/// [`ALLOCATOR_MODULES`] and the allocator shims; of the `__rust…` functions, only those named for
/// allocating: the others (`__rust_try` under `catch_unwind`, the panic and thread-start functions) call the
/// program.
fn in_allocation_path(name: &str) -> bool {
    if !trimmed(name) {
        return false;
    }
    match name.trim_start_matches('<').strip_prefix("heap_sampler::") {
        Some(path) => ALLOCATOR_MODULES.iter().any(|m| {
            path.strip_prefix(m)
                .is_some_and(|rest| rest.starts_with("::"))
        }),
        None => !name.starts_with("__rust") || name.contains("alloc"),
    }
}

/// Checks every rule of the pprof contract (DESIGN.md §5) that a decoded profile can show; panics with the
/// rule broken.
pub fn check_contract(p: &Profile) {
    let strings = p.string_table.len() as i64;
    let s = |i: i64| {
        assert!((0..strings).contains(&i), "string index {i} out of range");
        string(p, i)
    };
    assert_eq!(
        p.string_table.first().map(String::as_str),
        Some(""),
        "string_table[0] must be empty"
    );
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ]
    );
    let period = p.period_type.as_ref().expect("period_type");
    assert_eq!((s(period.r#type), s(period.unit)), ("space", "bytes"));
    assert_eq!(p.period, heap_sampler::sample_rate() as i64);
    assert_eq!(s(p.default_sample_type), "inuse_space");

    let dense = |ids: Vec<u64>, what: &str| {
        let expected: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(
            ids, expected,
            "{what} ids must be unique, non-zero and dense from 1"
        );
    };
    dense(p.mapping.iter().map(|m| m.id).collect(), "mapping");
    dense(p.location.iter().map(|l| l.id).collect(), "location");
    dense(p.function.iter().map(|f| f.id).collect(), "function");

    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let main = p.mapping.first().expect("a main mapping");
    assert_eq!(
        s(main.filename),
        exe.to_string_lossy().trim_end_matches(" (deleted)"),
        "main binary first"
    );
    assert!(!s(main.build_id).is_empty(), "main mapping has a build ID");
    for m in &p.mapping {
        s(m.filename);
        s(m.build_id);
        assert!(m.memory_start < m.memory_limit);
        // Each flag is claimed only when it holds for every location in the mapping (as Go's proto.go).
        let in_mapping = p.location.iter().filter(|l| l.mapping_id == m.id);
        if m.has_functions {
            assert!(
                in_mapping.clone().all(|l| !l.line.is_empty()),
                "has_functions, but a location of {} has no function",
                s(m.filename)
            );
        }
        if m.has_filenames {
            assert!(m.has_functions, "files without functions");
            let named_file = |id: u64| !s(p.function[id as usize - 1].filename).is_empty();
            assert!(
                in_mapping
                    .clone()
                    .all(|l| l.line.iter().all(|line| named_file(line.function_id))),
                "has_filenames, but a function of {} has no file",
                s(m.filename)
            );
        }
        if m.has_line_numbers {
            assert!(
                in_mapping
                    .clone()
                    .all(|l| l.line.iter().all(|line| line.line > 0)),
                "has_line_numbers, but a line of {} is 0",
                s(m.filename)
            );
        }
    }
    assert!(
        main.has_functions || !p.location.iter().any(|l| l.mapping_id == main.id),
        "every address of the test binary is named in process"
    );
    for f in &p.function {
        s(f.name);
        s(f.system_name);
        s(f.filename);
    }
    let mut addresses = HashSet::new();
    for l in &p.location {
        if l.mapping_id != 0 {
            let m = &p.mapping[l.mapping_id as usize - 1];
            assert!(
                (m.memory_start..m.memory_limit).contains(&l.address),
                "location inside its mapping"
            );
            // One location per address and inlined depth: a call site whose leading standard library
            // frames are dropped where it allocates has a location of its own for that.
            assert!(
                addresses.insert((l.mapping_id, l.address, l.line.len())),
                "one location per address and depth"
            );
        }
        for line in &l.line {
            assert!(
                (1..=p.function.len() as u64).contains(&line.function_id),
                "line refers to a function by id"
            );
        }
    }
    for sample in &p.sample {
        assert_eq!(sample.value.len(), 4, "4 values per sample");
        assert!(
            sample.value.iter().all(|&v| v >= 0),
            "no negative value: {:?}",
            sample.value
        );
        for id in &sample.location_id {
            assert!(
                (1..=p.location.len() as u64).contains(id),
                "sample refers to a location by id"
            );
        }
        // The size of the sample's allocations, on a sample whose allocations all had one size.
        if let Some(bytes) = sample.label.iter().find(|l| s(l.key) == "bytes") {
            assert!(bytes.num > 0 && s(bytes.num_unit) == "bytes" && bytes.str == 0);
        }
        let lines = sample
            .location_id
            .iter()
            .flat_map(|id| &p.location[*id as usize - 1].line);
        for (i, line) in lines.enumerate() {
            let name = s(p.function[line.function_id as usize - 1].name);
            assert!(
                !in_allocation_path(name),
                "profiler frame {name} in a sample: {}",
                {
                    let names: Vec<String> = sample
                        .location_id
                        .iter()
                        .map(|id| {
                            let l = &p.location[*id as usize - 1];
                            let fs: Vec<&str> = l
                                .line
                                .iter()
                                .map(|x| s(p.function[x.function_id as usize - 1].name))
                                .collect();
                            format!("{:#x} {fs:?}", l.address)
                        })
                        .collect();
                    names.join("\n")
                }
            );
            assert!(
                i > 0 || !trimmed(name),
                "{name} leads a sample, though the profiler trims it"
            );
        }
    }
}
