//! Profiles of release builds: the program in `tests/fixtures/builds` is built under each release
//! configuration a user may choose (debug info, strip, LTO, opt-level, panic strategy), run in exact mode,
//! and its profile must charge every byte it keeps to the function that keeps it, as the leaf of its
//! samples, with none of the profiler's own frames anywhere.
//!
//! The builds share one target directory, `fixture-builds` in the main crate's target directory. The
//! profiler and the fixture take each configuration's settings; every other dependency is built one way
//! for all of them (see [`dependency_profile`]), so that a configuration that changes only the profiler's
//! and the program's code compiles those two alone. Builds run one at a time, and each binary is copied out
//! before the next build overwrites `release/fixture-builds`; a configuration built once is reused by every
//! test of this process that needs it.

mod common;
#[cfg(target_arch = "x86_64")]
mod fast_path;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use heap_sampler::proto::Profile;

/// The fixture's manifest, relative to the main crate.
const FIXTURE: &str = "tests/fixtures/builds/Cargo.toml";
/// The fixture's package and binary name, and its crate name in function names.
const BINARY: &str = "fixture-builds";
const CRATE: &str = "fixture_builds";

/// The bytes a function may be off by: 1 % of what it keeps. In exact mode the profile should be exact; the
/// margin only absorbs a stray small allocation charged to the same function.
const TOLERANCE: f64 = 0.01;

/// The profile settings of one configuration, as `CARGO_PROFILE_RELEASE_<KEY>` variables (`DEBUG`, `STRIP`,
/// `LTO`, `OPT_LEVEL`, `PANIC`); every other release setting is cargo's default.
type Settings = &'static [(&'static str, &'static str)];

const LINE_TABLES_ONLY: Settings = &[("DEBUG", "line-tables-only")];
const DEBUG_FALSE: Settings = &[("DEBUG", "false")];
const STRIP_TRUE: Settings = &[("STRIP", "true")];
const LTO_FAT: Settings = &[("LTO", "fat")];
const DEBUG_FULL: Settings = &[("DEBUG", "full")];
const DEBUG_LIMITED: Settings = &[("DEBUG", "limited")];
// `strip = "debuginfo"` alone is what cargo already does to a release build without debug info; it only
// strips something from a build that has debug info.
const STRIP_DEBUGINFO: Settings = &[("DEBUG", "limited"), ("STRIP", "debuginfo")];
const OPT_LEVEL_S: Settings = &[("OPT_LEVEL", "s")];
const PANIC_ABORT: Settings = &[("PANIC", "abort")];

/// A built configuration: its binary, copied out of the shared target directory.
#[derive(Clone, Debug)]
struct Built {
    exe: PathBuf,
    seconds: f64,
    size: u64,
}

/// The target directory the fixture builds share: `fixture-builds` under the main crate's target directory
/// (`CARGO_TARGET_DIR` when set, relative paths taken from the main crate, else `target`).
fn shared_target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| manifest.join(dir))
        .unwrap_or_else(|| manifest.join("target"))
        .join("fixture-builds")
}

fn describe(settings: Settings) -> String {
    settings
        .iter()
        .map(|(key, value)| format!("{}={value}", key.to_lowercase().replace('_', "-")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds the fixture with `settings` (`cargo build`), or, with `relink_args`, relinks its binary with
/// those extra `rustc` arguments (`cargo rustc -- ARGS`: the dependencies and the code are the build's, only
/// the final link changes). Once per process: later calls return the same copy. One build at a time, and
/// the binary is copied out before the next build replaces it.
fn build_with(settings: Settings, relink_args: &[&str]) -> Built {
    static BUILDS: Mutex<BTreeMap<String, Built>> = Mutex::new(BTreeMap::new());
    let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let mut name = describe(settings);
    if !relink_args.is_empty() {
        name += &format!(" relinked with {}", relink_args.join(" "));
    }
    if let Some(built) = builds.get(&name) {
        return built.clone();
    }
    let target = shared_target_dir();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(dependency_profile(settings));
    if relink_args.is_empty() {
        cargo.args(["build", "--release", "--manifest-path", FIXTURE]);
    } else {
        cargo
            .args([
                "rustc",
                "--release",
                "--manifest-path",
                FIXTURE,
                "--bin",
                BINARY,
                "--",
            ])
            .args(relink_args);
    }
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target);
    // The configuration is the profile settings alone: none inherited from the environment, and no
    // RUSTFLAGS (the AddressSanitizer run of the suite sets some, for the test binaries only).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PROFILE_") || key.ends_with("RUSTFLAGS") {
            cargo.env_remove(&*key);
        }
    }
    for (key, value) in settings {
        cargo.env(format!("CARGO_PROFILE_RELEASE_{key}"), value);
    }
    let start = Instant::now();
    let out = cargo.output().expect("run cargo");
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "building the fixture ({name}) failed:\n{stderr}"
    );
    let compiled: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .map(|l| l.split(" (").next().unwrap_or(l))
        .collect();

    let dir = target
        .join("copies")
        .join(name.replace([' ', '=', ','], "_"));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(BINARY);
    // Copied to a temporary name and renamed: a copy being run by another test process stays intact.
    let partial = dir.join(format!("{BINARY}.{}", std::process::id()));
    std::fs::copy(target.join("release").join(BINARY), &partial).unwrap();
    std::fs::rename(&partial, &exe).unwrap();
    let size = std::fs::metadata(&exe).unwrap().len();
    eprintln!(
        "fixture ({name}): built in {seconds:.1} s, {size} bytes; compiled {} package(s): {}",
        compiled.len(),
        compiled.join(", ")
    );
    let built = Built { exe, seconds, size };
    builds.insert(name, built.clone());
    built
}

/// `--config` arguments that build every dependency but the profiler unoptimized and without debug info,
/// whatever the configuration, and the profiler with the configuration's `opt-level` and `debug` (cargo's
/// release defaults otherwise). What a configuration is about happens in the fixture and the profiler: the
/// allocation path, what is inlined into the program, the debug info the symbolizer reads. The other
/// dependencies (the symbolizer's readers, the unwinder's fallback) only run slower unoptimized; built one
/// way, they are compiled once for all configurations but those that change every unit (`lto`, `panic`),
/// and in a fraction of the time.
fn dependency_profile(settings: Settings) -> Vec<String> {
    let setting = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, value)| value)
    };
    // TOML values: integers and booleans bare, the rest quoted.
    let toml = |value: &str| match value {
        "true" | "false" | "0" | "1" | "2" | "3" => value.to_string(),
        _ => format!("{value:?}"),
    };
    let opt_level = toml(setting("OPT_LEVEL").unwrap_or("3"));
    let debug = toml(setting("DEBUG").unwrap_or("false"));
    [
        r#"profile.release.package."*".opt-level=0"#.to_string(),
        r#"profile.release.package."*".debug=false"#.to_string(),
        format!("profile.release.package.heap-sampler.opt-level={opt_level}"),
        format!("profile.release.package.heap-sampler.debug={debug}"),
    ]
    .into_iter()
    .flat_map(|value| ["--config".to_string(), value])
    .collect()
}

fn build(settings: Settings) -> Built {
    build_with(settings, &[])
}

/// Whether to skip: under AddressSanitizer (`.ci/run`'s second run of the suite) the fixture would be built
/// and checked exactly as in the first run (its builds drop RUSTFLAGS), for as many minutes again.
fn skip_under_sanitizer() -> bool {
    let skip = common::under_address_sanitizer();
    if skip {
        eprintln!(
            "skipped under AddressSanitizer: the fixture builds are the same as in the plain run"
        );
    }
    skip
}

/// What the fixture says it keeps: function name, runtime address of its code, bytes.
#[derive(Clone, Debug)]
struct Kept {
    name: String,
    address: u64,
    bytes: i64,
}

/// A run of the fixture: its profile (and where it is), what it kept, and its stderr.
struct Run {
    profile: Profile,
    path: PathBuf,
    kept: Vec<Kept>,
    stderr: String,
}

/// Runs `exe` with `env` (and none of the profiler's variables but those), writing its profile into `dir`.
fn run(exe: &Path, dir: &Path, env: &[(&str, &str)]) -> Run {
    let path = dir.join("profile.pb.gz");
    let mut child = Command::new(exe);
    child.arg(&path);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HEAP_SAMPLER_") {
            child.env_remove(key);
        }
    }
    let out = child
        .envs(env.iter().copied())
        .output()
        .expect("run the fixture");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        exe.display(),
        out.status
    );
    let kept: Vec<Kept> = stdout
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, address, bytes] = fields[..] else {
                panic!("unexpected line from the fixture: {line:?}");
            };
            Kept {
                name: name.to_string(),
                address: u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap(),
                bytes: bytes.parse().unwrap(),
            }
        })
        .collect();
    assert_eq!(
        kept.len(),
        4,
        "four functions in the fixture's output:\n{stdout}"
    );
    let profile = common::decode(&std::fs::read(&path).expect("the fixture wrote its profile"));
    Run {
        profile,
        path,
        kept,
        stderr,
    }
}

/// One location of a sample, named: its frames, innermost (inlined) first, and the function whose code
/// holds it (the outermost frame, or the symbol table's name for its address when named offline).
#[derive(Clone)]
struct Named {
    frames: Vec<String>,
    function: String,
}

impl Named {
    fn new(frames: Vec<String>) -> Named {
        let function = frames.last().cloned().unwrap_or_default();
        Named { frames, function }
    }
}

/// One sample as names: its locations, innermost first.
struct Stack {
    locations: Vec<Named>,
    inuse: i64,
}

impl Stack {
    /// The sample's leaf as the profile names it: the first line of its first location.
    fn leaf(&self) -> &str {
        self.locations
            .first()
            .and_then(|l| l.frames.first())
            .map_or("(empty stack)", String::as_str)
    }

    /// The sample's leaf when named offline (see [`Naming::Offline`]): the function that holds the first
    /// location that is not the standard library's code.
    fn offline_leaf(&self) -> &str {
        self.locations
            .iter()
            .map(|l| l.function.as_str())
            .find(|f| !is_std(f))
            .unwrap_or("(empty stack)")
    }

    /// Every name in the stack: frames and containing functions.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.locations.iter().flat_map(|l| {
            l.frames
                .iter()
                .map(String::as_str)
                .chain([l.function.as_str()])
        })
    }
}

/// The standard library's code, which the profiler drops from the leaf end of stacks when it can name it.
fn is_std(name: &str) -> bool {
    let name = name.trim_start_matches('<');
    ["alloc::", "core::", "std::", "hashbrown::"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// How the stacks were named, and so what the profiler could have trimmed.
#[derive(Clone, Copy, PartialEq)]
enum Naming {
    /// By the profiler, in process: it drops its own frames and the standard library's allocation frames
    /// from the leaf end, inlined ones included, so the first line of the first location is the program's.
    InProcess,
    /// Offline (`addr2line`, pprof), from a profile that held addresses only: the profiler could only drop
    /// whole locations of its own code (by address). The standard library's frames at the leaf end and the
    /// frames inlined into the program's functions (the allocator shims, inlined into the caller with the
    /// profiler's fast path) are still there, so the leaf is the function containing the first location
    /// that is not the standard library's, and profiler frames are looked for among containing functions.
    Offline,
}

/// The samples' stacks named by the profile itself (the in-process symbolizer); a location without lines is
/// shown by its address.
fn stacks_in_profile(p: &Profile) -> Vec<Stack> {
    let names: HashMap<u64, Named> = p
        .location
        .iter()
        .map(|l| {
            let mut frames: Vec<String> = l
                .line
                .iter()
                .map(|line| {
                    let f = &p.function[line.function_id as usize - 1];
                    common::string(p, f.name).to_string()
                })
                .collect();
            if frames.is_empty() {
                frames.push(format!("{:#x}", l.address));
            }
            (l.id, Named::new(frames))
        })
        .collect();
    stacks_with(p, &names)
}

fn stacks_with(p: &Profile, names: &HashMap<u64, Named>) -> Vec<Stack> {
    p.sample
        .iter()
        .map(|s| Stack {
            locations: s.location_id.iter().map(|id| names[id].clone()).collect(),
            inuse: s.value[3],
        })
        .collect()
}

/// `(p_offset, p_vaddr)` of the executable `PT_LOAD` segment of `elf`, from `readelf -lW`.
fn executable_segment(elf: &Path) -> (u64, u64) {
    let text = common::readelf("-lW", elf);
    text.lines()
        .find_map(|line| {
            // `LOAD 0x0344f0 0x00000000000354f0 0x... filesz memsz R E 0x1000`: the flags are the fields
            // between the sizes and the alignment.
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() != Some(&"LOAD") || !fields[6..fields.len() - 1].contains(&"E") {
                return None;
            }
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            Some((hex(fields[1]), hex(fields[2])))
        })
        .unwrap_or_else(|| panic!("no executable LOAD segment in {}:\n{text}", elf.display()))
}

/// The allocated sections of `elf` as `readelf -SW` lists them (name, type, address, offset, size, flags).
fn allocated_sections(elf: &Path) -> Vec<String> {
    common::readelf("-SW", elf)
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(']')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Name Type Address Off Size ES Flg Lk Inf Al (Flg is absent when empty).
            (fields.len() >= 7 && fields[6].contains('A')).then(|| fields[..7].join(" "))
        })
        .collect()
}

/// The bytes of section `section` of `elf` (`objcopy -O binary -j SECTION`).
fn section_bytes(elf: &Path, section: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("section{section}"));
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", section])
        .arg(elf)
        .arg(&out)
        .status()
        .expect("objcopy (binutils) runs");
    assert!(status.success(), "objcopy -j {section} failed");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// The address in the main binary's file (as its symbols and debug info give them) of runtime address
/// `address` of the main mapping: the file offset `address − memory_start + file_offset`, moved by
/// `p_vaddr − p_offset` of the executable segment.
fn file_address(p: &Profile, (p_offset, p_vaddr): (u64, u64), address: u64) -> u64 {
    let main = &p.mapping[0];
    address - main.memory_start + main.file_offset + p_vaddr - p_offset
}

/// `addr2line -f -C -i` on `elf`: the frames of each address, innermost (inlined) first; `??` when unknown.
fn addr2line(elf: &Path, addresses: &[u64]) -> Vec<Vec<String>> {
    let out = Command::new("addr2line")
        .args(["-a", "-f", "-C", "-i", "-e"])
        .arg(elf)
        .args(addresses.iter().map(|a| format!("{a:#x}")))
        .output()
        .expect("addr2line (binutils) runs");
    assert!(out.status.success(), "addr2line failed: {out:?}");
    // `-a` prints each address, then a function line and a `file:line` line per frame.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("0x") {
            groups.push(Vec::new());
        } else {
            let group = groups.last_mut().expect("addr2line starts with an address");
            group.push(line.to_string());
            lines.next();
        }
    }
    assert_eq!(
        groups.len(),
        addresses.len(),
        "one group per address:\n{text}"
    );
    groups
}

/// The symbol table of `elf`, demangled, by address: `(address, size, name)` (`nm -C -n -S --defined-only`).
fn symbol_table(elf: &Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("nm")
        .args(["-C", "-n", "-S", "--defined-only"])
        .arg(elf)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // `ADDRESS SIZE TYPE NAME`, or `ADDRESS TYPE NAME` for a symbol without a size.
            let fields: Vec<&str> = line.splitn(4, ' ').collect();
            let hex = |s: &str| u64::from_str_radix(s, 16).ok();
            match fields[..] {
                [address, size, kind, name] if kind.len() == 1 => {
                    Some((hex(address)?, hex(size)?, name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The function of `symbols` whose code holds `address`.
fn symbol_at(symbols: &[(u64, u64, String)], address: u64) -> Option<&str> {
    let i = symbols.partition_point(|&(start, _, _)| start <= address);
    symbols[..i]
        .iter()
        .rev()
        .find(|&&(start, size, _)| address < start + size)
        .map(|(_, _, name)| name.as_str())
}

/// Names the samples' stacks offline with [`addr2line`] on `elf`, a binary with the same code as the one
/// that was profiled and with its symbols (see [`file_address`]); the function holding each location is
/// named by the symbol table (with `debug = "line-tables-only"`, the debug info has bare names only).
/// Locations in other mappings are named by their file, addresses `addr2line` does not know by themselves.
fn stacks_by_addr2line(p: &Profile, elf: &Path) -> Vec<Stack> {
    let main = &p.mapping[0];
    let segment = executable_segment(elf);
    let symbols = symbol_table(elf);
    let mut names: HashMap<u64, Named> = HashMap::new();
    let mut query: Vec<(u64, u64)> = Vec::new();
    for l in &p.location {
        if l.mapping_id == main.id {
            query.push((l.id, l.address));
        } else if l.mapping_id != 0 {
            let m = &p.mapping[l.mapping_id as usize - 1];
            let file = common::string(p, m.filename);
            let base = file.rsplit('/').next().unwrap_or(file);
            names.insert(l.id, Named::new(vec![format!("[{base}] {:#x}", l.address)]));
        } else {
            names.insert(l.id, Named::new(vec![format!("{:#x}", l.address)]));
        }
    }
    let addresses: Vec<u64> = query
        .iter()
        .map(|&(_, a)| file_address(p, segment, a))
        .collect();
    for (&address, ((id, _), frames)) in addresses
        .iter()
        .zip(query.into_iter().zip(addr2line(elf, &addresses)))
    {
        let frames = if frames.iter().all(|f| f == "??") {
            vec![format!("{address:#x}")]
        } else {
            frames
        };
        let mut named = Named::new(frames);
        if let Some(function) = symbol_at(&symbols, address) {
            named.function = function.to_string();
        }
        names.insert(id, named);
    }
    stacks_with(p, &names)
}

/// Checks that [`file_address`] maps the fixture's functions (the runtime addresses it printed) to
/// themselves in `elf`: the offline names of a profile are only as good as that conversion.
fn check_address_conversion(p: &Profile, elf: &Path, kept: &[Kept]) {
    let segment = executable_segment(elf);
    let addresses: Vec<u64> = kept
        .iter()
        .map(|k| file_address(p, segment, k.address))
        .collect();
    for (k, frames) in kept.iter().zip(addr2line(elf, &addresses)) {
        assert!(
            frames.iter().any(|f| names_function(f, &k.name)),
            "{} names runtime address {:#x} of {} {frames:?}",
            elf.display(),
            k.address,
            k.name
        );
    }
}

/// Whether `name` is the fixture's function `function`: its full path, or its bare name (how inlined frames
/// are called in builds with `debug = "line-tables-only"`, and how pprof shows names it found itself).
fn names_function(name: &str, function: &str) -> bool {
    name == function || name == format!("{CRATE}::{function}")
}

/// The profiler's frames and Rust's allocation shims: none may be in any sample. They are those the profiler
/// trims ([`heap_sampler::PROFILER_FRAME_PREFIXES`]) but the standard library's, which stacks named offline
/// keep (see [`Naming::Offline`]), and the names below: the profiler's inside generic arguments, bare names
/// (what inlined frames are called in builds with `debug = "line-tables-only"` and what pprof shows), and the
/// unwinder's.
fn is_profiler_frame(name: &str) -> bool {
    const ANYWHERE: &[&str] = &[
        "heap_sampler::",
        "SamplingAllocator",
        "__rdl_",
        "_Unwind_Backtrace",
    ];
    // The `backtrace` crate, not `std::sys::backtrace::__rust_begin_short_backtrace`.
    const PREFIX: &[&str] = &["backtrace::", "<backtrace::"];
    const BARE: &[&str] = &["alloc_sampled", "track"];
    // The last path segment, without generic arguments: `track`, `alloc_sampled<std::alloc::System>`.
    let last = name.split('<').next().unwrap_or(name);
    let last = last.rsplit("::").next().unwrap_or(last);
    // Of the `__rust…` names, the allocator shims': not the standard library's thread-start, panic and
    // `catch_unwind` functions, which share the prefix and call the program.
    let trimmed = heap_sampler::PROFILER_FRAME_PREFIXES
        .iter()
        .any(|p| !is_std(p) && name.starts_with(p));
    (trimmed && (!name.starts_with("__rust") || name.contains("alloc")))
        || ANYWHERE.iter().any(|p| name.contains(p))
        || PREFIX.iter().any(|p| name.starts_with(p))
        || BARE.contains(&last)
}

/// The profile's top for assertion messages: in-use bytes by leaf, then the stacks of the samples over 10 KB.
fn render_top(stacks: &[Stack]) -> String {
    let mut by_leaf: HashMap<&str, i64> = HashMap::new();
    for s in stacks {
        *by_leaf.entry(s.leaf()).or_default() += s.inuse;
    }
    let mut by_leaf: Vec<(&str, i64)> = by_leaf.into_iter().filter(|(_, b)| *b > 0).collect();
    by_leaf.sort_by_key(|(name, bytes)| (-bytes, *name));
    let mut out = String::from("inuse_space by leaf (flat):\n");
    for (name, bytes) in by_leaf.iter().take(15) {
        out += &format!("  {bytes:>10} B  {name}\n");
    }
    out += "stacks holding over 10 KB, innermost first (the frames of one location in brackets):\n";
    let mut big: Vec<&Stack> = stacks.iter().filter(|s| s.inuse > 10_000).collect();
    big.sort_by_key(|s| -s.inuse);
    for s in big {
        let frames: Vec<String> = s
            .locations
            .iter()
            .take(8)
            .map(|l| {
                let frames = l.frames.join(" | ");
                if l.frames.last() == Some(&l.function) {
                    format!("[{frames}]")
                } else {
                    format!("[{frames}] in {}", l.function)
                }
            })
            .collect();
        out += &format!("  {:>10} B  {}\n", s.inuse, frames.join(" <- "));
    }
    out
}

/// Checks that each kept function is the leaf of its samples with its bytes (within 1 %) and that no sample
/// holds a profiler frame (see [`Naming`] for what leaf and frames mean); prints what it found (leaves,
/// in-use per function, profiler frames), then panics with every problem and the profile's top.
fn check_stacks(config: &str, stacks: &[Stack], kept: &[Kept], naming: Naming) {
    let leaf = |s: &Stack| match naming {
        Naming::InProcess => s.leaf().to_string(),
        Naming::Offline => s.offline_leaf().to_string(),
    };
    let mut problems = Vec::new();
    for k in kept {
        let mut leaves: BTreeMap<String, i64> = BTreeMap::new();
        let mut cum = 0;
        for s in stacks
            .iter()
            .filter(|s| s.names().any(|n| names_function(n, &k.name)))
        {
            *leaves.entry(leaf(s)).or_default() += s.inuse;
            cum += s.inuse;
        }
        let flat: i64 = stacks
            .iter()
            .filter(|s| names_function(&leaf(s), &k.name))
            .map(|s| s.inuse)
            .sum();
        eprintln!(
            "[{config}] {}: keeps {} B; flat {flat} B, cum {cum} B; leaves of its samples: {leaves:?}",
            k.name, k.bytes
        );
        if (flat - k.bytes).abs() as f64 > TOLERANCE * k.bytes as f64 {
            problems.push(format!(
                "{}: {flat} B in use as the leaf of its samples (cumulative {cum} B), expected {} B \
                 within 1 %; leaves of the samples through it: {leaves:?}",
                k.name, k.bytes
            ));
        }
    }
    let mut profiler: BTreeMap<&str, usize> = BTreeMap::new();
    for s in stacks {
        let names: Vec<&str> = match naming {
            Naming::InProcess => s.names().collect(),
            Naming::Offline => s.locations.iter().map(|l| l.function.as_str()).collect(),
        };
        for name in names.into_iter().filter(|n| is_profiler_frame(n)) {
            *profiler.entry(name).or_default() += 1;
        }
    }
    eprintln!("[{config}] profiler frames (name: occurrences): {profiler:?}");
    if !profiler.is_empty() {
        problems.push(format!(
            "profiler frames in the samples (name: occurrences): {profiler:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "[{config}] {}\n{}",
        problems.join("\n"),
        render_top(stacks)
    );
}

fn comments(p: &Profile) -> Vec<&str> {
    p.comment.iter().map(|&i| common::string(p, i)).collect()
}

/// pprof only symbolizes a mapping that claims neither functions, nor file names, nor line numbers
/// (`symbolizer.go`: `if !force && (m.HasFunctions || m.HasFilenames || m.HasLineNumbers) { continue }`).
fn claims_symbols(m: &heap_sampler::proto::Mapping) -> bool {
    m.has_functions || m.has_filenames || m.has_line_numbers
}

/// Builds `settings`, runs the fixture and checks its profile as named in process.
fn check_configuration(settings: Settings) {
    if skip_under_sanitizer() {
        return;
    }
    let config = describe(settings);
    let built = build(settings);
    let dir = common::temp_dir(&format!(
        "release-builds-{}",
        config.replace(['=', ','], "_")
    ));
    let run = run(&built.exe, &dir, &[]);
    let main = &run.profile.mapping[0];
    eprintln!(
        "[{config}] {} B binary, built in {:.1} s; main mapping has_functions = {}, {} functions, {} \
         locations; comments: {:?}",
        built.size,
        built.seconds,
        main.has_functions,
        run.profile.function.len(),
        run.profile.location.len(),
        comments(&run.profile)
    );
    check_stacks(
        &config,
        &stacks_in_profile(&run.profile),
        &run.kept,
        Naming::InProcess,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `debug = "line-tables-only"`: names of functions come from the symbol table, inlined frames from the line
/// tables with bare names (`with_capacity_in<alloc::alloc::Global>`, not `alloc::raw_vec::…`), and the
/// allocator shims with the profiler's fast path are inlined into the program's functions: the trimming of
/// the profiler's and the standard library's frames must work on those too.
#[test]
fn line_tables_only() {
    check_configuration(LINE_TABLES_ONLY);
}

/// `debug = false`, cargo's release default (which also strips the standard library's debug info): names
/// from the symbol table only, no inlined frames.
#[test]
fn debug_false() {
    check_configuration(DEBUG_FALSE);
}

/// `lto = "fat"`: the profiler's allocation path can be inlined into the allocator shims, and those into the
/// program, across crates.
#[test]
fn lto_fat() {
    check_configuration(LTO_FAT);
}

/// `strip = true` (`-C strip=symbols`): no `.symtab`, no DWARF, so nothing can be named in process and the
/// profile carries addresses only; its main mapping must say so (`has_functions: false`, and no file names
/// or lines) for pprof to symbolize it when given a binary.
///
/// There is no unstripped binary of this build to give pprof: cargo strips at link time, and the GNU build
/// ID is a hash of the linked file, so any unstripped binary has another build ID, which pprof does not use
/// (`symbolizer.go` skips it: "build ID mismatch"; the profile stays `[fixture-builds]`). Nor is the
/// `debug = false` build a twin: every profile setting, `strip` too, enters cargo's `-C metadata` hash, so
/// its code differs (measured once: the same `.text` size, but 85,372 of its bytes differ, and `.eh_frame`
/// is 8 bytes longer). The twin is this build relinked without
/// stripping (`cargo rustc -- -C strip=none`, the last `-C strip` wins): the same dependencies and object
/// code, a relink of one second. Its allocated sections must have the same headers (`readelf -SW`) and its
/// `.text` the same bytes; then `addr2line` on the twin names the profile's addresses (see
/// [`file_address`]).
#[test]
fn strip_true() {
    if skip_under_sanitizer() {
        return;
    }
    let config = describe(STRIP_TRUE);
    let stripped = build(STRIP_TRUE);
    let twin = build_with(STRIP_TRUE, &["-C", "strip=none"]);
    let dir = common::temp_dir("release-builds-strip-true");
    assert_eq!(
        allocated_sections(&stripped.exe),
        allocated_sections(&twin.exe),
        "the stripped build and its relinked twin have the same allocated sections"
    );
    assert!(
        section_bytes(&stripped.exe, ".text", &dir) == section_bytes(&twin.exe, ".text", &dir),
        "the stripped build and its relinked twin have the same code"
    );
    let run = run(&stripped.exe, &dir, &[]);
    let p = &run.profile;
    let main = &p.mapping[0];
    let named = p
        .location
        .iter()
        .filter(|l| l.mapping_id == main.id && !l.line.is_empty())
        .count();
    eprintln!(
        "[{config}] {} B binary (twin {} B), built in {:.1} s; main mapping has_functions = {}, \
         has_filenames = {}, has_line_numbers = {}; {named} of its locations named in process; comments: \
         {:?}; stderr: {:?}",
        stripped.size,
        twin.size,
        stripped.seconds,
        main.has_functions,
        main.has_filenames,
        main.has_line_numbers,
        comments(p),
        run.stderr
    );
    check_address_conversion(p, &twin.exe, &run.kept);
    let stacks = stacks_by_addr2line(p, &twin.exe);
    assert!(
        !claims_symbols(main),
        "[{config}] no symbols in the binary, yet the main mapping claims them (has_functions {}, \
         has_filenames {}, has_line_numbers {}), so pprof will not symbolize it\n{}",
        main.has_functions,
        main.has_filenames,
        main.has_line_numbers,
        render_top(&stacks)
    );
    check_stacks(&config, &stacks, &run.kept, Naming::Offline);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The allocator's entry points in a release build keep their fast path: no lock, no atomic
/// read-modify-write, no call but to the inner allocator and to the slow paths (see [`fast_path`]). On the
/// `line-tables-only` build, whose profiler has cargo's release `opt-level`, as a user's release build does.
/// x86-64 only: the check reads x86-64 instructions.
#[cfg(target_arch = "x86_64")]
#[test]
fn fast_path_pinned() {
    if skip_under_sanitizer() {
        return;
    }
    fast_path::check(&build(LINE_TABLES_ONLY).exe);
}

/// `debug = "full"`: full debug info, the slowest build and the largest binary.
#[test]
#[ignore = "slow: run before releasing"]
fn debug_full() {
    check_configuration(DEBUG_FULL);
}

/// `debug = "limited"`, what the README recommends: full paths for inlined frames.
#[test]
#[ignore = "slow: run before releasing"]
fn debug_limited() {
    check_configuration(DEBUG_LIMITED);
}

/// `debug = "limited"` with `strip = "debuginfo"`: the debug info is stripped at link time, the symbol table
/// stays; names come from `.symtab`.
#[test]
#[ignore = "slow: run before releasing"]
fn strip_debuginfo() {
    check_configuration(STRIP_DEBUGINFO);
}

/// `opt-level = "s"`: other inlining decisions around the allocation paths.
#[test]
#[ignore = "slow: run before releasing"]
fn opt_level_s() {
    check_configuration(OPT_LEVEL_S);
}

/// `panic = "abort"`: no landing pads; the unwinder must still walk the program's frames.
#[test]
#[ignore = "slow: run before releasing"]
fn panic_abort() {
    check_configuration(PANIC_ABORT);
}

/// `go tool pprof -top -noinlines -sample_index=inuse_space -unit=B BINARY PROFILE`: by containing function,
/// as the profiler could only trim whole locations (see [`Naming::Offline`]).
fn pprof_top(go: &PathBuf, binary: &Path, profile: &Path) -> String {
    common::pprof(
        go,
        &[
            "-top",
            "-noinlines",
            "-sample_index=inuse_space",
            "-unit=B",
            binary.to_str().unwrap(),
            profile.to_str().unwrap(),
        ],
    )
}

/// The flat and cumulative bytes of `function` in `pprof -top -unit=B` output.
fn top_entry(top: &str, function: &str) -> Option<(i64, i64)> {
    top.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !names_function(&fields[5..].join(" "), function) {
            return None;
        }
        // pprof writes a zero without its unit.
        let bytes = |s: &str| s.strip_suffix('B').unwrap_or(s).parse::<i64>().ok();
        Some((bytes(fields[0])?, bytes(fields[3])?))
    })
}

/// Checks pprof's offline names: each kept function with its bytes, cumulative, within 1 % (its samples may
/// still lead with the standard library's allocation code, which the profiler could not name), and no
/// profiler function. The caller has checked the same profile with `addr2line`, so a failure here that
/// `addr2line` did not see is in how pprof maps the profile's addresses into `binary`: pprof names them as
/// if the main mapping's `memory_start` were the executable segment's `p_vaddr`, which is why the profiler
/// describes a mapping from its segment's first byte rather than from the page below it that
/// `/proc/self/maps` gives.
fn check_pprof_top(config: &str, top: &str, kept: &[Kept], p: &Profile, binary: &Path) {
    let mut problems = Vec::new();
    for k in kept {
        match top_entry(top, &k.name) {
            Some((flat, cum)) => {
                eprintln!(
                    "[{config}] pprof: {}: keeps {} B; flat {flat} B, cum {cum} B",
                    k.name, k.bytes
                );
                if (cum - k.bytes).abs() as f64 > TOLERANCE * k.bytes as f64 {
                    problems.push(format!(
                        "{}: {cum} B cumulative, expected {} B within 1 %",
                        k.name, k.bytes
                    ));
                }
            }
            None => problems.push(format!("{} not named", k.name)),
        }
    }
    let profiler: Vec<&str> = top
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 6 && is_profiler_frame(&fields[5..].join(" "))
        })
        .collect();
    if !profiler.is_empty() {
        problems.push(format!("profiler frames: {profiler:#?}"));
    }
    let main = &p.mapping[0];
    let (p_offset, p_vaddr) = executable_segment(binary);
    assert!(
        problems.is_empty(),
        "[{config}] {}\n(main mapping {:#x}-{:#x} at file offset {:#x}; executable segment of {}: p_offset \
         {p_offset:#x}, p_vaddr {p_vaddr:#x})\n{top}",
        problems.join("\n"),
        main.memory_start,
        main.memory_limit,
        main.file_offset,
        binary.display()
    );
}

/// A binary stripped after the build (`strip -s`: no `.symtab`, no DWARF, the GNU build-ID note kept), as
/// distributions ship them: the profile cannot name anything in process, so it must say so (main mapping
/// `has_functions: false`, no file names or lines; a comment; a line on stderr), and the unstripped original
/// (same build ID, same code) must name the fixture's functions with their bytes: `addr2line` on the
/// profile's addresses, and `go tool pprof` given the original.
#[test]
fn stripped_copy_symbolizes_offline() {
    if skip_under_sanitizer() {
        return;
    }
    let built = build(LINE_TABLES_ONLY);
    let dir = common::temp_dir("release-builds-stripped-copy");
    let stripped = dir.join(BINARY);
    std::fs::copy(&built.exe, &stripped).unwrap();
    let status = Command::new("strip")
        .arg("-s")
        .arg(&stripped)
        .status()
        .expect("strip (binutils) runs");
    assert!(status.success(), "strip -s failed");
    assert_eq!(
        common::readelf_build_id(&stripped),
        common::readelf_build_id(&built.exe),
        "strip keeps the build ID"
    );
    let run = run(&stripped, &dir, &[]);
    let p = &run.profile;
    let main = &p.mapping[0];
    eprintln!(
        "[stripped copy] main mapping has_functions = {}, has_filenames = {}, has_line_numbers = {}; {} \
         functions, {} locations; comments: {:?}; stderr: {:?}",
        main.has_functions,
        main.has_filenames,
        main.has_line_numbers,
        p.function.len(),
        p.location.len(),
        comments(p),
        run.stderr
    );
    assert_eq!(
        common::string(p, main.filename),
        stripped.to_str().unwrap(),
        "the stripped copy is the main mapping"
    );
    check_address_conversion(p, &built.exe, &run.kept);
    let stacks = stacks_by_addr2line(p, &built.exe);
    assert!(
        !claims_symbols(main),
        "the stripped copy's mapping claims symbols (has_functions {}, has_filenames {}, \
         has_line_numbers {}), so pprof will not symbolize it; as named in process:\n{}",
        main.has_functions,
        main.has_filenames,
        main.has_line_numbers,
        render_top(&stacks_in_profile(p))
    );
    assert!(
        comments(p)
            .iter()
            .any(|c| c.to_lowercase().contains("symbol")),
        "a comment says symbols are missing: {:?}",
        comments(p)
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.to_lowercase().contains("symbol")),
        "the program's stderr says symbols are missing: {:?}",
        run.stderr
    );
    check_stacks("stripped copy", &stacks, &run.kept, Naming::Offline);
    if let Some(go) = common::go() {
        let top = pprof_top(&go, &built.exe, &run.path);
        check_pprof_top("stripped copy", &top, &run.kept, p, &built.exe);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `HEAP_SAMPLER_SYMBOLIZE=0` leaves symbolization to the collector (pprof, Parca, Pyroscope): the profile
/// holds addresses, mappings and build IDs only (no Function, no Line; no mapping claims symbols), and the
/// binary names the fixture's functions with their bytes: `addr2line` on the profile's addresses, and
/// `go tool pprof BINARY PROFILE`.
#[test]
fn symbolization_left_to_the_collector() {
    if skip_under_sanitizer() {
        return;
    }
    let built = build(LINE_TABLES_ONLY);
    let dir = common::temp_dir("release-builds-no-symbolize");
    let run = run(&built.exe, &dir, &[("HEAP_SAMPLER_SYMBOLIZE", "0")]);
    let p = &run.profile;
    let lines = p.location.iter().filter(|l| !l.line.is_empty()).count();
    let claims: Vec<bool> = p.mapping.iter().map(claims_symbols).collect();
    eprintln!(
        "[HEAP_SAMPLER_SYMBOLIZE=0] {} functions, {lines} of {} locations with lines; mappings claiming \
         symbols: {claims:?}; stderr: {:?}",
        p.function.len(),
        p.location.len(),
        run.stderr
    );
    assert!(
        p.function.is_empty() && lines == 0,
        "{} functions and {lines} locations with lines, expected none:\n{}",
        p.function.len(),
        render_top(&stacks_in_profile(p))
    );
    assert!(
        !claims.contains(&true),
        "no mapping claims symbols: {claims:?}"
    );
    assert_eq!(
        common::string(p, p.mapping[0].build_id),
        common::readelf_build_id(&built.exe),
        "the main mapping carries the binary's build ID"
    );
    check_address_conversion(p, &built.exe, &run.kept);
    let stacks = stacks_by_addr2line(p, &built.exe);
    check_stacks(
        "HEAP_SAMPLER_SYMBOLIZE=0",
        &stacks,
        &run.kept,
        Naming::Offline,
    );
    if let Some(go) = common::go() {
        let top = pprof_top(&go, &built.exe, &run.path);
        check_pprof_top("HEAP_SAMPLER_SYMBOLIZE=0", &top, &run.kept, p, &built.exe);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
