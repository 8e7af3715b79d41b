//! Helpers shared by the integration tests: decoding profiles, summing them by source line, checking the
//! pprof contract, and finding `go tool pprof`.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use heap_sampler::proto::Profile;
use prost::Message;

/// Tests of one binary share the global profiler: they run one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gunzips and decodes a profile written by `dump_profile`.
pub fn decode(gzipped: &[u8]) -> Profile {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .expect("profile is gzip");
    Profile::decode(raw.as_slice()).expect("profile decodes as profile.proto")
}

/// What `readelf OPTION path` (binutils) prints.
pub fn readelf(option: &str, path: &std::path::Path) -> String {
    let out = Command::new("readelf")
        .arg(option)
        .arg(path)
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The GNU build ID of the ELF file at `path`, as `readelf -n` prints it.
pub fn readelf_build_id(path: &std::path::Path) -> String {
    let notes = readelf("-n", path);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build ID note in {}:\n{notes}", path.display()))
        .to_string()
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
/// line of its innermost frame in that function, and the sample's values.
pub fn samples_at(p: &Profile, function: &str) -> Vec<(i64, Vec<i64>)> {
    let functions: HashMap<u64, &str> = p
        .function
        .iter()
        .map(|f| (f.id, string(p, f.name)))
        .collect();
    let locations: HashMap<u64, _> = p.location.iter().map(|l| (l.id, l)).collect();
    let mut out = Vec::new();
    for sample in &p.sample {
        let line = sample
            .location_id
            .iter()
            .flat_map(|id| locations[id].line.iter())
            .find_map(|line| {
                function_matches(functions[&line.function_id], function).then_some(line.line)
            });
        if let Some(line) = line {
            out.push((line, sample.value.clone()));
        }
    }
    out
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

/// Allocates a block of `size` bytes (kept in `kept`) after `depth` nested calls of itself: each depth is a
/// distinct stack through `recurse`.
#[inline(never)]
pub fn recurse(depth: usize, size: usize, kept: &mut Vec<Vec<u8>>) {
    if depth == 0 {
        kept.push(std::hint::black_box(vec![3u8; size]));
    } else {
        recurse(std::hint::black_box(depth - 1), size, kept);
    }
    std::hint::black_box(&kept);
}

/// Frames of the profiler's allocation path and of Rust's allocation shims: never anywhere in a sample.
/// (Other `heap_sampler` code, such as decoding its `proto` types, is the program's own and may allocate.)
pub const PROFILER: &[&str] = &[
    "heap_sampler::allocator::",
    "<heap_sampler::allocator::",
    "heap_sampler::sampler::",
    "heap_sampler::stack::",
    "heap_sampler::table::",
    "__rust_alloc",
    "__rust_realloc",
    "__rdl_",
    "__rg_",
];

/// The allocation functions the shims are reached through: never the innermost frame of a sample.
pub const ALLOCATION_PATH: &[&str] = &[
    "alloc::alloc::",
    "<alloc::alloc::",
    "std::alloc::",
    "<std::alloc::",
];

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
        let bytes = sample
            .label
            .iter()
            .find(|l| s(l.key) == "bytes")
            .expect("numeric label `bytes`");
        assert!(bytes.num >= 0);
        let lines = sample
            .location_id
            .iter()
            .flat_map(|id| &p.location[*id as usize - 1].line);
        for (i, line) in lines.enumerate() {
            let name = s(p.function[line.function_id as usize - 1].name);
            assert!(
                !PROFILER.iter().any(|f| name.starts_with(f)),
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
                i > 0 || !ALLOCATION_PATH.iter().any(|f| name.starts_with(f)),
                "shim {name} leads a sample"
            );
        }
    }
}

/// `go`, for `go tool pprof`. `None` (the caller skips) where Go is missing, unless `CI` is set: there its
/// absence fails the test, as CI installs it.
pub fn go() -> Option<PathBuf> {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("go"));
    }
    if std::env::var_os("CI").is_some() {
        panic!("`go` not found, and CI is set: install golang-go (apt-get install -y golang-go)");
    }
    eprintln!("skipping the go tool pprof part: `go` not found (apt-get install -y golang-go)");
    None
}

/// Runs `go tool pprof ARGS`, returning stdout; panics with stderr if it fails.
pub fn pprof(go: &PathBuf, args: &[&str]) -> String {
    pprof_saving_to(go, args, &std::env::temp_dir())
}

/// As [`pprof`], with `save_dir` as `PPROF_TMPDIR`: where pprof saves a profile it fetched from a URL.
pub fn pprof_saving_to(go: &PathBuf, args: &[&str], save_dir: &std::path::Path) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", save_dir)
        .output()
        .expect("run go tool pprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

/// The binary of example `name`: `cargo test` builds the examples next to the test binaries' `deps`
/// directory; a filtered run (`cargo test --test report`) does not, so build it then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// A fresh directory under the system temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("heap-sampler-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Environment variable that tells a test binary it runs as the child of [`run_child`].
pub const CHILD: &str = "HEAP_SAMPLER_TEST_CHILD";

/// Whether this process is the child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `test` of this binary in a child process (with `HEAP_SAMPLER_TEST_CHILD` set and output not
/// captured), under a hard timeout. On timeout, prints every thread's stack (gdb), kills the child and
/// panics. Returns the child's stdout and stderr; panics if it did not exit 0.
pub fn run_child(test: &str, timeout: std::time::Duration) -> (String, String) {
    run_child_with_env(test, &[], timeout)
}

/// As [`run_child`], with the variables `env` set in the child's environment (for what a process reads at
/// start).
pub fn run_child_with_env(
    test: &str,
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> (String, String) {
    use std::process::Stdio;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child test");
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let stacks = Command::new("gdb")
                .args([
                    "-p",
                    &child.id().to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(gdb failed: {e})"));
            let _ = child.kill();
            let _ = child.wait();
            panic!("child test {test} hung for {timeout:?}; its threads:\n{stacks}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "child test {test} failed ({status}):\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
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

/// The standard deviation, in bytes, of the estimated bytes of `count` allocations of `size` bytes each at
/// sample rate `rate`: `sqrt(count · size² · (1 − p) / p)`, p = 1 − e^(−size/rate) (see src/sampler.rs).
pub fn sigma_bytes(size: usize, count: usize, rate: usize) -> f64 {
    let p = -(-(size as f64) / rate as f64).exp_m1();
    (count as f64 * (size as f64).powi(2) * (1.0 - p) / p).sqrt()
}

/// Whether this run is under AddressSanitizer, which slows every allocation and memory access by an unknown
/// factor, so that timings prove nothing: `.ci/run` sets `HEAP_SAMPLER_TEST_SANITIZER=address` for that run
/// (the sanitizer's runtime exports nothing a test could look up).
pub fn under_address_sanitizer() -> bool {
    std::env::var_os("HEAP_SAMPLER_TEST_SANITIZER").is_some_and(|v| v == "address")
}
