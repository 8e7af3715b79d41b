//! In-process symbolization of a bucket snapshot: return addresses to functions, files, lines and inlined
//! frames, from each file's DWARF debug info, else its ELF symbol table (`.symtab`, then `.dynsym`).
//!
//! The debug info is read with addr2line for the addresses of one dump and dropped after it: parsed DWARF
//! of a large binary takes tens of MiB, more than a service should keep for its profiler. What is kept is a
//! bounded cache of the frames of each address seen ([`MAX_CACHED_ADDRESSES`]), with names interned, and
//! it is counted in [`crate::Stats::profiler_bytes`]. An address that no lookup names is kept as an address,
//! its mapping says so (`has_functions` false), and pprof symbolizes it offline from the binary, as it does
//! for Go profiles of stripped binaries.
//!
//! The frames of the standard library's allocation and collections code that lead a stack (`Vec::push`,
//! `String::clone`, `HashMap::insert` down to the allocator shims) are dropped by default, as Go's heap
//! profiles drop its runtime's allocation frames (`hideRuntime` in `runtime/pprof/protomem.go`), so that the
//! flat column names the program's code (see [`set_keep_std_frames`]).

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::sync::Arc;

use super::mappings::{self, MappingInfo};
use crate::labels::LabelSet;
use crate::lock::{AnyLock, Lock, Rank};
use crate::sampler::Guard;
use crate::stack::path;
use crate::table::buckets::{BucketSnapshot, Counts, Snapshot};
use crate::table::{WordHasher, hash_map_bytes, table_bytes};

/// One source-level frame of a location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Frame {
    /// Demangled, without the hash suffix, e.g. `channels::foo`.
    pub(crate) name: Arc<str>,
    /// As the linker knows it (mangled), or as the debug info names it.
    pub(crate) system_name: Arc<str>,
    /// Source path, or "" when unknown.
    pub(crate) file: Arc<str>,
    /// 1-based line, or 0 when unknown.
    pub(crate) line: u32,
}

impl Frame {
    /// A frame that stands for an address no lookup named, shown as pprof shows one (`0x…`).
    pub(crate) fn address(address: u64) -> Frame {
        Frame::marker(&format!("{address:#x}"))
    }

    fn marker(name: &str) -> Frame {
        let name: Arc<str> = name.into();
        Frame {
            system_name: name.clone(),
            name,
            file: "".into(),
            line: 0,
        }
    }
}

/// A return address with its frames, innermost (inlined) first; no frames when it was not symbolized.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedLocation {
    /// The call instruction's address (return address − 1); 0 for markers such as `[truncated]`.
    pub(crate) address: u64,
    pub(crate) frames: Vec<Frame>,
}

/// One stack and label set of the profile, and its counts.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedSample {
    /// Indexes into [`Resolved::locations`], innermost first. A profile of many deep stacks is mostly these:
    /// 32-bit, and boxed without spare capacity.
    pub(crate) locations: Box<[u32]>,
    pub(crate) labels: LabelSet,
    pub(crate) counts: Counts,
}

/// A symbolized snapshot: what the pprof builder and the text report read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resolved {
    pub(crate) locations: Vec<ResolvedLocation>,
    pub(crate) samples: Vec<ResolvedSample>,
    /// The process's executable mappings, with what the symbolizer found in each.
    pub(crate) mappings: Vec<MappingInfo>,
    /// What is missing from the profile and what to do about it: for its comments.
    pub(crate) notes: Vec<String>,
}

/// Marker frame that ends a stack cut at the maximum depth.
pub(crate) const TRUNCATED: &str = "[truncated]";
/// Marker frame of the samples charged to the overflow bucket.
pub(crate) const OVERFLOW: &str = "[bucket table full]";
/// Marker frame of samples whose stack held nothing of the program (an unwinder that stopped inside the
/// profiler, or a stack not captured for want of room on the thread's stack): they are counted, not dropped.
pub(crate) const NOT_CAPTURED: &str = "[stack not captured]";

static SYMBOLIZE: AtomicBool = AtomicBool::new(true);
static KEEP_STD_FRAMES: AtomicBool = AtomicBool::new(false);

/// Chooses whether profiles are symbolized in process (the default) or carry only addresses, mappings and
/// build IDs, for a collector that symbolizes them itself (Parca, Pyroscope with uploaded debug info,
/// `go tool pprof <binary> profile.pb.gz`). Without symbolization a dump reads no debug info, so its cost
/// does not grow with the binary's size; [`crate::report`], [`crate::top_sites`] and the folded stacks then
/// show addresses. The environment variable `HEAP_SAMPLER_SYMBOLIZE=0` sets it off from the start.
pub fn set_symbolize(on: bool) {
    SYMBOLIZE.store(on, Relaxed);
}

/// Whether profiles are symbolized in process (see [`set_symbolize`]).
pub fn symbolize() -> bool {
    SYMBOLIZE.load(Relaxed)
}

/// Keeps (`true`) or drops (`false`, the default) the standard library's frames that lead a stack: the
/// frames of `alloc::`, `core::`, `std::` and `hashbrown::` (std's `HashMap`) code between the program and
/// the allocator, down to the global allocator shims. Dropped, the innermost frame of every sample is the
/// program's code that asked for memory (`my_crate::load` rather than
/// `alloc::raw_vec::RawVecInner::try_allocate_in`), so pprof's flat column names the program, as Go's heap
/// profiles drop the runtime's allocation frames. A stack made only of such frames keeps them all.
pub fn set_keep_std_frames(keep: bool) {
    KEEP_STD_FRAMES.store(keep, Relaxed);
}

/// The most addresses whose frames are kept between dumps; when a dump would go past it, the cache starts
/// over. A service's stacks go through far fewer distinct return addresses.
pub(crate) const MAX_CACHED_ADDRESSES: usize = 1 << 16;

/// The frames of each return address seen, with names and paths interned. The process's is only locked
/// under the dump lock.
#[derive(Default)]
pub(crate) struct Cache {
    frames: HashMap<usize, Arc<[Frame]>>,
    strings: HashSet<Arc<str>>,
}

impl Cache {
    /// Keeps `frames` (innermost first; none when no lookup names it) as the frames of return address `ip`.
    pub(crate) fn insert(&mut self, ip: usize, frames: Vec<Frame>) {
        self.frames.insert(ip, frames.into());
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(interned) = self.strings.get(s) {
            return interned.clone();
        }
        let interned: Arc<str> = s.into();
        self.strings.insert(interned.clone());
        interned
    }

    /// Bytes this cache has allocated: both tables, each address's frames and each interned string.
    fn bytes(&self) -> usize {
        let arc = |payload: usize| (2 * size_of::<usize>() + payload).next_multiple_of(8);
        hash_map_bytes(&self.frames)
            + table_bytes(self.strings.capacity(), size_of::<Arc<str>>())
            + self
                .frames
                .values()
                .map(|frames| arc(frames.len() * size_of::<Frame>()))
                .sum::<usize>()
            + self.strings.iter().map(|s| arc(s.len())).sum::<usize>()
    }
}

static CACHE: Lock<Option<Cache>> = Lock::new(Rank::SymbolCache, None);

/// The symbol cache's lock, for the `fork` handlers.
pub(crate) fn cache_lock() -> &'static dyn AnyLock {
    &CACHE
}
static CACHE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes held by the symbol cache, for [`crate::Stats::profiler_bytes`].
pub(crate) fn cache_bytes() -> usize {
    CACHE_BYTES.load(Relaxed)
}

/// Whether a frame belongs to the standard library or the allocator shims: by its name (see [`is_std`]),
/// or, where the debug info has only short names (`debug = "line-tables-only"`), by its file, which for the
/// standard library and its dependencies is under the `/rustc/<commit>/` and `/rust/deps/` prefixes that
/// rustc remaps their sources to.
fn is_std_frame(frame: &Frame) -> bool {
    is_std(&frame.name)
        || frame.file.starts_with("/rustc/")
        || frame.file.starts_with("/rust/deps/")
}

const STD_CRATES: &[&str] = &["std::", "core::", "alloc::", "hashbrown::"];

const PRIMITIVES: &[&str] = &[
    "str", "bool", "char", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64",
];

/// Whether a function name belongs to the standard library: its path, or for a trait method `<X as Trait>::f`
/// the type `X`, is in a standard crate, or `X` is a primitive, slice, reference, pointer, tuple or a
/// generic parameter.
pub(crate) fn is_std(name: &str) -> bool {
    let subject = match name.strip_prefix('<') {
        Some(rest) if rest.contains(" as ") => rest.split(" as ").next().unwrap_or(rest),
        Some(rest) => rest.split('>').next().unwrap_or(rest),
        None => name,
    };
    let primitive_or_generic = subject.starts_with(['[', '&', '*', '('])
        || PRIMITIVES.contains(&subject)
        || (subject.len() == 1 && subject.starts_with(|c: char| c.is_ascii_uppercase()));
    primitive_or_generic || STD_CRATES.iter().any(|p| subject.starts_with(p))
}

/// Demangles a Rust symbol without its hash suffix; other names are kept as they are.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_string(),
    }
}

/// The frames at file address `probe` (a call instruction) of the file `loader` reads, innermost first:
/// DWARF's inlined frames with their files and lines, and for the outermost frame the symbol table's name
/// when DWARF has only a short one (as with `debug = "line-tables-only"`, which keeps no linkage names).
/// Without DWARF, the symbol table's name alone; empty when neither names the address.
fn lookup(cache: &mut Cache, loader: &addr2line::Loader, probe: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    // (name, whether it is a linkage name, file, line)
    let mut found: Vec<(Option<String>, bool, Option<String>, u32)> = Vec::new();
    if let Ok(mut iter) = loader.find_frames(probe) {
        while let Ok(Some(frame)) = iter.next() {
            let name = frame
                .function
                .as_ref()
                .and_then(|f| f.raw_name().ok())
                .map(|n| n.into_owned());
            let linkage = name
                .as_deref()
                .is_some_and(|n| rustc_demangle::try_demangle(n).is_ok());
            let (file, line) = frame.location.map_or((None, 0), |l| {
                (l.file.map(str::to_string), l.line.unwrap_or(0))
            });
            found.push((name, linkage, file, line));
        }
    }
    let symbol = loader.find_symbol(probe).map(str::to_string);
    match (found.last_mut(), symbol) {
        (Some(outermost), Some(symbol)) if !outermost.1 => {
            outermost.0 = Some(symbol);
        }
        (None, Some(symbol)) => found.push((Some(symbol), true, None, 0)),
        _ => {}
    }
    for (name, _, file, line) in found {
        // A frame DWARF gives no function for cannot be shown as one.
        let Some(system_name) = name else { continue };
        frames.push(Frame {
            name: cache.intern(&demangle(&system_name)),
            system_name: cache.intern(&system_name),
            file: cache.intern(file.as_deref().unwrap_or("")),
            line,
        });
    }
    frames
}

/// Symbolizes the return addresses `ips` (sorted, none cached) into the cache: each file's debug info is
/// opened once, for all of its addresses, and dropped at the end. The symbolizer of the process's dumps
/// (see [`Lookup`]), which counts its cache in [`cache_bytes`].
fn symbolize_into(cache: &mut Cache, ips: &[usize], mappings: &[MappingInfo]) {
    let mut by_file: HashMap<&str, Vec<(usize, &MappingInfo)>> = HashMap::new();
    for &ip in ips {
        let call = (ip as u64).saturating_sub(1);
        match mappings.iter().find(|m| m.contains(call)) {
            Some(mapping) => by_file
                .entry(mapping.open_path())
                .or_default()
                .push((ip, mapping)),
            None => cache.insert(ip, Vec::new()),
        }
    }
    for (path, ips) in by_file {
        let loader = addr2line::Loader::new(path).ok();
        for (ip, mapping) in ips {
            let frames = match &loader {
                Some(loader) => {
                    let call = (ip as u64).saturating_sub(1);
                    lookup(cache, loader, mapping.file_address(call))
                }
                None => Vec::new(),
            };
            cache.insert(ip, frames);
        }
    }
    CACHE_BYTES.store(cache.bytes(), Relaxed);
}

/// The source file of the allocator's entry points, as the debug info names it: where the compiler inlines
/// `GlobalAlloc::alloc` into the program's code (with the shims, in one function), the return address is the
/// program's, and only the inlined frames say that the allocator is there.
const ALLOCATOR_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/allocator.rs");

/// The beginnings of the names of the frames that the profiler removes from the leaf end of every sampled
/// stack, whatever [`set_keep_std_frames`] says: its own (`heap_sampler::…`), Rust's allocator shims
/// (`__rust_alloc`, `__rg_alloc` and their kin) and the standard library's functions that only hand an
/// allocation to the global allocator (`alloc::alloc::alloc`, `Global`'s `Allocator` methods). In builds that
/// do not inline the latter each crate has a copy of its own, at an address of its own, so the allocation
/// path learned by address does not hold the program's copy.
///
/// Only the leaf end goes, up to the program's first frame: further from the leaf, a stack may still pass
/// through the profiler, as one sampled in a closure given to [`crate::with_labels`] does. Where the debug info
/// has only short names (`debug = "line-tables-only"`), the allocator's frames are also known by their source
/// file.
pub const PROFILER_FRAME_PREFIXES: &[&str] = &[
    "heap_sampler::",
    "<heap_sampler::",
    "__rust",
    "__rg_",
    "alloc::alloc::",
    "<alloc::alloc::",
    "std::alloc::",
    "<std::alloc::",
];

/// Whether a frame is the profiler's or one of the allocator shims that lead to it, inlined into the program's
/// code or copied into it: by name, or by the allocator's source file where names are short.
fn is_profiler_frame(frame: &Frame) -> bool {
    PROFILER_FRAME_PREFIXES
        .iter()
        .any(|p| frame.name.starts_with(p))
        || &*frame.file == ALLOCATOR_SOURCE
}

/// How many leading locations of a stack, and then how many leading inlined frames of the next location,
/// are the profiler's or the allocator shims inlined into the program, or (unless `keep_std`) the standard
/// library's: all of them are dropped, unless that would leave nothing.
fn leading_std(located: &[(usize, Arc<[Frame]>)], keep_std: bool) -> (usize, usize) {
    let leading = |dropped: &dyn Fn(&Frame) -> bool| {
        for (index, (_, frames)) in located.iter().enumerate() {
            let std = frames.iter().take_while(|f| dropped(f)).count();
            if frames.is_empty() || std < frames.len() {
                // Unsymbolized (nothing is known of it) or kept: the stack starts here.
                return Some((index, std));
            }
        }
        None
    };
    // The profiler's frames and the shims go always; the standard library's only when something remains.
    let profiler = leading(&is_profiler_frame).unwrap_or((0, 0));
    if keep_std {
        return profiler;
    }
    leading(&|f: &Frame| is_profiler_frame(f) || is_std_frame(f)).unwrap_or(profiler)
}

/// The program's frames of a bucket: a sample taken while the allocation path was being learned still has
/// the path's frames.
fn program(frames: &[usize]) -> &[usize] {
    frames.get(path::path_frames(frames)..).unwrap_or(&[])
}

/// Shows buckets, part after part, to the callback it is given (see [`resolve_parts`]).
pub(crate) type Visit<'a> = dyn FnMut(&mut dyn FnMut(&Snapshot)) + 'a;

/// Symbolizes the buckets of `snapshot` (see [`resolve_parts`]), inside the profiler guard and under the
/// dump lock.
pub(crate) fn resolve(guard: &Guard, snapshot: &Snapshot) -> Resolved {
    resolve_parts(guard, snapshot.len(), &mut |f| f(snapshot))
}

/// Symbolizes the buckets that `visit` shows with the process's mappings, symbol cache and settings (see
/// [`Resolver::resolve`]), inside the profiler guard and under the dump lock.
pub(crate) fn resolve_parts(guard: &Guard, samples: usize, visit: &mut Visit<'_>) -> Resolved {
    // The mappings first: their lock ranks below the cache's (see `crate::lock::Rank`).
    let resolver = Resolver {
        mappings: mappings::read(),
        symbolize: symbolize(),
        keep_std: KEEP_STD_FRAMES.load(Relaxed),
        lookup: &symbolize_into,
    };
    let mut cache = CACHE.lock();
    resolver.resolve(
        guard,
        cache.get_or_insert_with(Cache::default),
        samples,
        visit,
    )
}

/// Looks up return addresses (sorted, none in the cache) in the files of the mappings and puts the frames of
/// each into the cache, none for an address it cannot name.
pub(crate) type Lookup<'a> = dyn Fn(&mut Cache, &[usize], &[MappingInfo]) + 'a;

/// What a snapshot is symbolized with: the process's, or made-up mappings and frames in tests, as Go's
/// `protomem_test.go` feeds its profile builder.
pub(crate) struct Resolver<'a> {
    /// The executable mappings, main binary first.
    pub(crate) mappings: Vec<MappingInfo>,
    /// Whether addresses are looked up at all (see [`set_symbolize`]).
    pub(crate) symbolize: bool,
    /// Whether the standard library's leading frames are kept (see [`set_keep_std_frames`]).
    pub(crate) keep_std: bool,
    /// What names the addresses the cache lacks.
    pub(crate) lookup: &'a Lookup<'a>,
}

impl Resolver<'_> {
    /// Symbolizes the buckets that `visit` shows its callback, part after part (the table's stripes, one at
    /// a time, so that no copy of the whole table is held), with the frames `cache` has and those the lookup
    /// puts in it: one location per distinct return address (and per count of leading frames dropped from
    /// it, see [`leading_std`]), one sample per distinct stack and label set, with room made for `samples`
    /// samples at once. Runs inside the profiler guard.
    ///
    /// The samples are built as the buckets are shown, which is all there is to do when the cache has every
    /// address (a warm dump). When it lacks some, `visit` is called again: the addresses are gathered and
    /// symbolized, then the samples are built anew. The buckets shown need not be the same each time (the
    /// table grows meanwhile): those that still have an address not symbolized are kept aside, and
    /// symbolized at the end.
    pub(crate) fn resolve(
        self,
        _: &Guard,
        cache: &mut Cache,
        samples: usize,
        visit: &mut Visit<'_>,
    ) -> Resolved {
        let mut resolved = Resolved {
            mappings: self.mappings,
            ..Resolved::default()
        };
        let lookup = self.lookup;
        let mut builder = SampleBuilder::new(self.symbolize, self.keep_std);
        builder.start(&mut resolved, samples);
        let missing = add_buckets(&mut builder, &mut resolved, cache, visit, None);
        if !builder.complete {
            // What was built is of no use: its memory is given back before the debug info is read.
            builder.clear(&mut resolved);
            symbolize_buckets(cache, lookup, &resolved.mappings, missing, visit);
            builder.start(&mut resolved, samples);
            let mut late = Snapshot::default();
            let missing = add_buckets(&mut builder, &mut resolved, cache, visit, Some(&mut late));
            if !late.is_empty() {
                let mut visit_late = |f: &mut dyn FnMut(&Snapshot)| f(&late);
                symbolize_buckets(cache, lookup, &resolved.mappings, missing, &mut visit_late);
                for (frames, bucket) in late.iter() {
                    builder.add(&mut resolved, cache, frames, bucket, true);
                }
            }
        }
        judge_mappings(&mut resolved, self.symbolize);
        resolved
    }
}

/// A set of return addresses.
type Addresses = HashSet<usize, BuildHasherDefault<WordHasher>>;

/// Adds the buckets that `visit` shows to the samples, and returns the addresses the cache lacks. A bucket
/// with such an address is not added: it goes to `late` if given, else no bucket after it is added (those
/// added are of no use).
fn add_buckets(
    builder: &mut SampleBuilder,
    resolved: &mut Resolved,
    cache: &Cache,
    visit: &mut Visit<'_>,
    mut late: Option<&mut Snapshot>,
) -> Addresses {
    let mut missing = Addresses::default();
    visit(&mut |part| {
        for (frames, bucket) in part.iter() {
            let keep_adding = late.is_some() || builder.complete;
            if keep_adding && builder.add(resolved, cache, frames, bucket, false) {
                continue;
            }
            builder.complete = false;
            if let Some(late) = late.as_deref_mut() {
                late.push(frames, bucket);
            }
            missing.extend(
                program(frames)
                    .iter()
                    .filter(|ip| !cache.frames.contains_key(ip)),
            );
        }
    });
    missing
}

/// Symbolizes the addresses `missing` into the cache; if that would take the cache past
/// [`MAX_CACHED_ADDRESSES`], the cache starts over with the addresses of the buckets that `visit` shows.
fn symbolize_buckets(
    cache: &mut Cache,
    lookup: &Lookup<'_>,
    mappings: &[MappingInfo],
    mut missing: Addresses,
    visit: &mut Visit<'_>,
) {
    if cache.frames.len() + missing.len() > MAX_CACHED_ADDRESSES {
        *cache = Cache::default();
        missing.clear();
        visit(&mut |part| {
            for (frames, _) in part.iter() {
                missing.extend(program(frames));
            }
        });
    }
    let mut missing: Vec<usize> = missing.into_iter().collect();
    missing.sort_unstable();
    lookup(cache, &missing, mappings);
}

/// Adds a location, and gives its index.
fn push_location(locations: &mut Vec<ResolvedLocation>, location: ResolvedLocation) -> u32 {
    locations.push(location);
    // Every location holds memory of its own: 2^32 of them would take hundreds of GiB, so the index fits.
    u32::try_from(locations.len() - 1).unwrap_or(u32::MAX)
}

/// The locations and samples of one [`resolve_parts`], found by key as buckets are added.
struct SampleBuilder {
    /// Whether every bucket shown was added.
    complete: bool,
    symbolize: bool,
    keep_std: bool,
    no_frames: Arc<[Frame]>,
    /// By return address and count of leading inlined frames dropped.
    location_of: HashMap<(usize, usize), u32, BuildHasherDefault<WordHasher>>,
    marker_of: HashMap<&'static str, u32>,
    /// Samples by stack and labels, found by hash: the table holds indexes, not copies of the stacks.
    sample_of: hashbrown::HashTable<usize>,
    hasher: std::hash::RandomState,
    /// The bucket being added: its addresses with their frames, then its stack of location indexes.
    located: Vec<(usize, Arc<[Frame]>)>,
    stack: Vec<u32>,
}

impl SampleBuilder {
    fn new(symbolize: bool, keep_std: bool) -> SampleBuilder {
        SampleBuilder {
            complete: true,
            symbolize,
            keep_std,
            no_frames: Arc::from([]),
            location_of: HashMap::default(),
            marker_of: HashMap::new(),
            sample_of: hashbrown::HashTable::new(),
            hasher: std::hash::RandomState::new(),
            located: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Makes room for `samples` samples, at once rather than as they come: a vector or table that grows
    /// holds its old and its new memory while it moves.
    fn start(&mut self, resolved: &mut Resolved, samples: usize) {
        resolved.samples.reserve(samples);
        // Called with nothing built yet: no entry is moved, so none needs its hash.
        self.sample_of.reserve(samples, |_| 0);
    }

    /// Forgets the locations and samples found, and gives back their memory.
    fn clear(&mut self, resolved: &mut Resolved) {
        self.complete = true;
        self.location_of = HashMap::default();
        self.marker_of = HashMap::new();
        self.sample_of = hashbrown::HashTable::new();
        resolved.locations = Vec::new();
        resolved.samples = Vec::new();
    }

    /// Adds a bucket whose frames are `frames` to the sample of its stack and labels. When symbolizing, an
    /// address the cache lacks makes it add nothing and return false, unless `unnamed_ok` (the address is
    /// then shown unsymbolized).
    fn add(
        &mut self,
        resolved: &mut Resolved,
        cache: &Cache,
        frames: &[usize],
        bucket: &BucketSnapshot,
        unnamed_ok: bool,
    ) -> bool {
        self.located.clear();
        for &ip in program(frames) {
            let frames = match cache.frames.get(&ip) {
                Some(frames) if self.symbolize => frames.clone(),
                None if self.symbolize && !unnamed_ok => return false,
                _ => self.no_frames.clone(),
            };
            self.located.push((ip, frames));
        }
        let (skip_locations, skip_inline) = leading_std(&self.located, self.keep_std);
        let stack = &mut self.stack;
        stack.clear();
        for (k, (ip, frames)) in self.located.iter().enumerate().skip(skip_locations) {
            let dropped = if k == skip_locations { skip_inline } else { 0 };
            let index = *self.location_of.entry((*ip, dropped)).or_insert_with(|| {
                push_location(
                    &mut resolved.locations,
                    ResolvedLocation {
                        address: (*ip as u64).saturating_sub(1),
                        frames: frames.get(dropped..).unwrap_or(&[]).to_vec(),
                    },
                )
            });
            stack.push(index);
        }
        let marker = if bucket.overflow {
            Some(OVERFLOW)
        } else if bucket.truncated {
            Some(TRUNCATED)
        } else if stack.is_empty() {
            Some(NOT_CAPTURED)
        } else {
            None
        };
        if let Some(marker) = marker {
            let index = *self.marker_of.entry(marker).or_insert_with(|| {
                push_location(
                    &mut resolved.locations,
                    ResolvedLocation {
                        address: 0,
                        frames: vec![Frame::marker(marker)],
                    },
                )
            });
            stack.push(index);
        }
        let hasher = &self.hasher;
        let hash_of = |stack: &[u32], labels: &LabelSet| hasher.hash_one((stack, labels));
        let hash = hash_of(stack, &bucket.labels);
        let samples = &mut resolved.samples;
        let found = self
            .sample_of
            .find(hash, |&i| {
                samples[i].labels == bucket.labels && *samples[i].locations == **stack
            })
            .copied();
        match found {
            Some(i) => samples[i].counts.merge(&bucket.counts),
            None => {
                self.sample_of.insert_unique(hash, samples.len(), |&i| {
                    hash_of(&samples[i].locations, &samples[i].labels)
                });
                samples.push(ResolvedSample {
                    locations: stack.as_slice().into(),
                    labels: bucket.labels,
                    counts: bucket.counts,
                });
            }
        }
        true
    }
}

/// Sets each mapping's `has_*` flags from its locations (true only when every location in it has frames,
/// files, lines), and notes on the program's file when addresses have no name or no line, and on another
/// file when none has a name.
fn judge_mappings(resolved: &mut Resolved, symbolize: bool) {
    let Resolved {
        locations,
        mappings,
        notes,
        ..
    } = resolved;
    if !symbolize {
        notes.push(
            "not symbolized (set_symbolize(false) or HEAP_SAMPLER_SYMBOLIZE=0): symbolize with \
             `go tool pprof <binary> <profile>`, or let the collector do it"
                .to_string(),
        );
        return;
    }
    for mapping in mappings.iter_mut() {
        let (mut total, mut unnamed, mut no_file, mut no_line) = (0usize, 0usize, 0usize, 0usize);
        for location in locations
            .iter()
            .filter(|l| l.address != 0 && mapping.contains(l.address))
        {
            total += 1;
            unnamed += location.frames.is_empty() as usize;
            no_file += location.frames.iter().any(|f| f.file.is_empty()) as usize;
            no_line += location.frames.iter().any(|f| f.line == 0) as usize;
        }
        mapping.has_functions = total > 0 && unnamed == 0;
        mapping.has_filenames = mapping.has_functions && no_file == 0;
        mapping.has_line_numbers = mapping.has_filenames && no_line == 0;
        let build = if mapping.build_id.is_empty() {
            String::new()
        } else {
            format!(" (build ID {})", mapping.build_id)
        };
        // Another file (libc, say) often has a few internal functions without symbols: said only when none is named.
        let note = if unnamed > 0 && (mapping.is_main || unnamed == total) {
            format!(
                "{}{build}: no symbols for {unnamed} of {total} addresses (stripped, or no symbol table): \
                 they are kept as addresses; symbolize offline with `go tool pprof <unstripped copy of \
                 the binary> <profile>`, or build without `strip` and with `debug = \"line-tables-only\"`",
                mapping.path
            )
        } else if mapping.is_main && total > 0 && no_file == total {
            format!(
                "{}{build}: function names only, no files or lines (no debug info): build with \
                 `debug = \"line-tables-only\"` or more for them",
                mapping.path
            )
        } else {
            continue;
        };
        if mapping.is_main {
            warn_once(&note);
        }
        notes.push(note);
    }
}

/// The function names of `addresses` (a location's address: a call instruction, one byte before a return
/// address), innermost inlined function first as Go's `runtime.FuncForPC` gives it, for pprof's remote
/// symbolization; addresses no lookup names are left out. Runs inside the profiler guard and under the dump
/// lock.
pub(crate) fn function_names(_: &Guard, addresses: &[u64]) -> Vec<(u64, Arc<str>)> {
    let mappings = mappings::read();
    let mut cache = CACHE.lock();
    let cache = cache.get_or_insert_with(Cache::default);
    let mut missing: Vec<usize> = addresses
        .iter()
        .map(|&a| a.wrapping_add(1) as usize)
        .filter(|ip| !cache.frames.contains_key(ip))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if cache.frames.len() + missing.len() > MAX_CACHED_ADDRESSES {
        *cache = Cache::default();
    }
    symbolize_into(cache, &missing, &mappings);
    addresses
        .iter()
        .filter_map(|&a| {
            let frames = cache.frames.get(&(a.wrapping_add(1) as usize))?;
            Some((a, frames.first()?.name.clone()))
        })
        .collect()
}

/// Says `note` on stderr, the first time only: a process dumps again and again.
fn warn_once(note: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "heap-sampler: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_library_frames_are_recognised() {
        assert!(is_std("std::sync::mpmc::array::Channel<T>::with_capacity"));
        assert!(is_std("alloc::raw_vec::RawVec<T,A>::grow_one"));
        assert!(is_std("<alloc::vec::Vec<T> as core::clone::Clone>::clone"));
        assert!(is_std("<[T] as alloc::slice::hack::ConvertVec>::to_vec"));
        assert!(is_std("<T as alloc::string::ToString>::to_string"));
        assert!(is_std("<str>::repeat"));
        assert!(is_std(
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"
        ));
        assert!(!is_std("channels::foo"));
        assert!(!is_std("<serde_json::Value as core::clone::Clone>::clone"));
        assert!(!is_std("Tokio::run"));
        assert!(!is_std("stdx::f"));
    }

    fn frame(name: &str, file: &str) -> Frame {
        Frame {
            name: name.into(),
            system_name: name.into(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn leading_standard_library_frames_are_found_by_name_or_file() {
        let std_location: Arc<[Frame]> = Arc::from([
            frame(
                "alloc::alloc::alloc",
                "/rustc/abc/library/alloc/src/alloc.rs",
            ),
            // A short name from line tables, known by its file.
            frame(
                "try_allocate_in<u8>",
                "/rustc/abc/library/alloc/src/raw_vec/mod.rs",
            ),
        ]);
        let mixed: Arc<[Frame]> = Arc::from([
            frame("with_capacity", "/rustc/abc/library/alloc/src/vec/mod.rs"),
            frame("app::load", "/src/app/main.rs"),
        ]);
        let program: Arc<[Frame]> = Arc::from([frame("app::main", "/src/app/main.rs")]);
        let stack = [(1, std_location.clone()), (2, mixed), (3, program)];
        assert_eq!(leading_std(&stack, false), (1, 1));
        // Kept, but for the allocation shim: `alloc::alloc::alloc` only hands the request on.
        assert_eq!(leading_std(&stack, true), (0, 1));
        // Nothing but the standard library: kept whole, but for the allocation shim that leads it.
        assert_eq!(leading_std(&[(1, std_location)], false), (0, 1));
        // An address without symbols ends the search: nothing is known of it.
        assert_eq!(leading_std(&[(1, Arc::from([]))], false), (0, 0));
        // The allocator inlined into the program's function: dropped even when the standard library's
        // frames are kept.
        let inlined: Arc<[Frame]> = Arc::from([
            frame("alloc<std::alloc::System>", ALLOCATOR_SOURCE),
            frame("__rust_alloc", ""),
            frame("app::load", "/src/app/main.rs"),
        ]);
        assert_eq!(leading_std(&[(1, inlined)], true), (0, 2));
    }

    #[test]
    fn the_profilers_and_the_allocator_shims_frames_are_cut_from_the_leaf() {
        let location = |names: &[&str]| -> Arc<[Frame]> {
            names.iter().map(|name| frame(name, "/src/x.rs")).collect()
        };
        let stack = [
            (1, location(&["heap_sampler::sampler::sample"])),
            (
                2,
                location(&[
                    "<heap_sampler::SamplingAllocator<A> as core::alloc::global::GlobalAlloc>::alloc",
                    "__rust_alloc",
                ]),
            ),
            (3, location(&["__rg_alloc"])),
            (4, location(&["alloc::alloc::exchange_malloc"])),
            (5, location(&["alloc::vec::Vec<T,A>::push"])),
            (6, location(&["app::collect", "app::main"])),
        ];
        // Down to the program's first frame; with the standard library kept, down to `Vec::push`.
        assert_eq!(leading_std(&stack, false), (5, 0));
        assert_eq!(leading_std(&stack, true), (4, 0));
        // A stack of nothing but the profiler's frames is kept whole rather than left empty.
        assert_eq!(leading_std(&stack[..3], false), (0, 0));
        assert_eq!(leading_std(&stack[..3], true), (0, 0));
        // Where names are short (line tables only), the allocator is known by its source file.
        let short: Arc<[Frame]> = Arc::from([
            frame("alloc<std::alloc::System>", ALLOCATOR_SOURCE),
            frame("app::fill", "/src/app.rs"),
        ]);
        assert_eq!(leading_std(&[(7, short)], true), (0, 1));
    }

    #[test]
    fn buckets_that_appear_while_resolving_are_symbolized_too() {
        // Addresses in no mapping: symbolized as unnamed, and cached as such.
        let (a, b, c) = (0x7_0000_0011, 0x7_0000_0021, 0x7_0000_0031);
        let counts = Counts {
            alloc_objects: 1 << 32,
            ..Counts::default()
        };
        let bucket = Snapshot::bucket(LabelSet::EMPTY, counts);
        let mut first = Snapshot::default();
        first.push(&[a, b], &bucket);
        let mut grown = first.clone();
        grown.push(&[c, b], &bucket);
        // The same stack again, as another shard's bucket.
        grown.push(&[a, b], &bucket);
        let mut calls = 0;
        // The table grows after the first look: `c` is first seen when the samples are built again.
        let resolved = resolve_parts(&Guard::inside(), 1, &mut |f| {
            calls += 1;
            f(if calls == 1 { &first } else { &grown })
        });
        assert_eq!(calls, 2);
        let mut stacks: Vec<(Vec<u64>, u128)> = resolved
            .samples
            .iter()
            .map(|s| {
                let addresses = s
                    .locations
                    .iter()
                    .map(|&i| resolved.locations[i as usize].address + 1)
                    .collect();
                (addresses, s.counts.alloc_objects >> 32)
            })
            .collect();
        stacks.sort();
        assert_eq!(
            stacks,
            [(vec![a as u64, b as u64], 2), (vec![c as u64, b as u64], 1)]
        );
        let cached = CACHE
            .lock()
            .as_ref()
            .is_some_and(|cache| cache.frames.contains_key(&c));
        assert!(cached, "the late address is in the cache");
    }
}
