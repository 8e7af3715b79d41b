//! Whole-program cost: the same workloads in the same binary with and without the profiler, in paired runs.
//!
//! Workloads: `json` (serde_json documents parsed and indexed), `index` (a string-keyed map index), `churn`
//! (random-size allocate/free churn over a window of live buffers), `churn2` (the same on two threads) and
//! `pairs16` (allocate+free pairs of 16 bytes: the fast path alone). Three more are for counting the cost of
//! one sample under callgrind (`benches/callgrind_sample.sh`), not for the timed rounds: `deep16` (a block
//! of 64 KiB allocated and freed 16 frames below the workload, at a sample rate of 4 KiB, so that every block
//! is sampled with a weight and a variance as real samples have), `deep16x8` (the same from 8 call sites in
//! turn: 8 stacks and buckets) and `deep16exact` (64-byte blocks at rate 1, exact mode).
//! Each run is a fresh child process of this binary; its global allocator is chosen from the environment
//! before the first allocation:
//!
//! - `bare`: `System`;
//! - `sampled`: `SamplingAllocator<System>` at 512 KiB;
//! - `sampled-fp`: the same with the frame-pointer unwinder (meaningful when built with
//!   `RUSTFLAGS="-C force-frame-pointers=yes"`);
//! - with `--features jemalloc-bench`: `jemalloc` (`prof:false`) and `jemalloc-prof` (jemalloc's own heap
//!   profiler, `prof:true,lg_prof_sample:19`, i.e. 512 KiB).
//!
//! Every variant goes through the same one-branch dispatch, so the comparison is of the allocators alone.
//! Rounds run each variant once, in rotating order; the report gives each variant's median wall time and the
//! median of its per-round ratio to its baseline (`bare` for `sampled`, `jemalloc` for `jemalloc-prof`).
//!
//! `cargo bench --bench workloads [-- ROUNDS]` (default 11 rounds).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Instant;

use heap_sampler::SamplingAllocator;

const MODE_VAR: &str = "HEAP_SAMPLER_BENCH_ALLOCATOR";
const WORKLOAD_VAR: &str = "HEAP_SAMPLER_BENCH_WORKLOAD";

const UNSET: u8 = 0;
const BARE: u8 = 1;
const SAMPLED: u8 = 2;
const JEMALLOC: u8 = 3;

static MODE: AtomicU8 = AtomicU8::new(UNSET);
static SAMPLING: SamplingAllocator<System> = SamplingAllocator::new(System);
#[cfg(all(
    feature = "jemalloc-bench",
    target_os = "linux",
    target_arch = "x86_64"
))]
static JE: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Reads the allocator choice from the environment without allocating (getenv), once.
#[inline]
fn mode() -> u8 {
    let mode = MODE.load(Relaxed);
    if mode != UNSET {
        return mode;
    }
    // SAFETY: getenv with a NUL-terminated name; the result is only read while the environment is unchanged.
    let value = unsafe { libc::getenv(c"HEAP_SAMPLER_BENCH_ALLOCATOR".as_ptr()) };
    let chosen = if value.is_null() {
        BARE
    } else {
        // SAFETY: getenv returns a NUL-terminated string.
        match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
            b"sampled" | b"sampled-fp" => SAMPLED,
            b"jemalloc" | b"jemalloc-prof" => JEMALLOC,
            _ => BARE,
        }
    };
    MODE.store(chosen, Relaxed);
    chosen
}

struct Switch;

macro_rules! dispatch {
    ($method:ident($($arg:expr),*)) => {
        match mode() {
            SAMPLED => SAMPLING.$method($($arg),*),
            #[cfg(all(feature = "jemalloc-bench", target_os = "linux", target_arch = "x86_64"))]
            JEMALLOC => JE.$method($($arg),*),
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to one allocator, fixed before the first allocation for the life of the process.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { dispatch!(alloc(layout)) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { dispatch!(alloc_zeroed(layout)) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { dispatch!(dealloc(ptr, layout)) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { dispatch!(realloc(ptr, layout, new_size)) }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

/// A small xorshift generator: deterministic workloads without allocating.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

fn json(rng: &mut Rng) {
    let mut documents: HashMap<u64, serde_json::Value> = HashMap::new();
    let mut by_tag: HashMap<String, Vec<u64>> = HashMap::new();
    for id in 0..60_000u64 {
        let word = |rng: &mut Rng| WORDS[(rng.next() % WORDS.len() as u64) as usize];
        let text = format!(
            r#"{{"id":{id},"name":"{} {}","tags":["{}","{}"],"items":[{{"sku":"{}","qty":{}}},{{"sku":"{}","qty":{}}}],"note":"{}"}}"#,
            word(rng),
            word(rng),
            word(rng),
            word(rng),
            word(rng),
            rng.next() % 10,
            word(rng),
            rng.next() % 10,
            word(rng).repeat((rng.next() % 8 + 1) as usize),
        );
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        for tag in doc["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
        {
            by_tag.entry(tag.to_string()).or_default().push(id);
        }
        documents.insert(id, doc);
    }
    black_box((documents.len(), by_tag.len()));
}

fn index(rng: &mut Rng) {
    let mut index: HashMap<String, Vec<u32>> = HashMap::new();
    let mut ordered: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..400_000u32 {
        let key = format!(
            "{}-{}-{}",
            WORDS[(rng.next() % 16) as usize],
            rng.next() % 5000,
            i % 7
        );
        index.entry(key.clone()).or_default().push(i);
        if i % 4 == 0 {
            ordered.insert(key, i);
        }
    }
    black_box((index.len(), ordered.len()));
}

fn churn_thread(seed: u64, operations: usize) {
    let mut rng = Rng(seed);
    let mut window: VecDeque<Vec<u8>> = VecDeque::with_capacity(4096);
    for _ in 0..operations {
        // Sizes spread log-uniformly over 16 B – 64 KiB, like a mixed workload.
        let size = 16usize << (rng.next() % 13);
        let size = size + (rng.next() as usize % size);
        window.push_back(black_box(Vec::with_capacity(size)));
        if window.len() > 4096 {
            window.pop_front();
        }
    }
    black_box(window.len());
}

fn churn(_rng: &mut Rng) {
    churn_thread(7, 3_000_000);
}

fn churn2(_rng: &mut Rng) {
    std::thread::scope(|s| {
        s.spawn(|| churn_thread(11, 1_500_000));
        s.spawn(|| churn_thread(13, 1_500_000));
    });
}

/// 10 million allocate+free pairs of 16 bytes: the fast path alone. Also the program to count instructions
/// per pair with `valgrind --tool=callgrind` (see the README).
fn pairs16(_rng: &mut Rng) {
    for _ in 0..10_000_000 {
        drop(black_box(Box::new(black_box([0u8; 16]))));
    }
}

/// Sampled allocate+free pairs per run of the `deep16` workloads.
const DEEP_PAIRS: usize = 100_000;

/// Allocates and frees a block of `size + N` bytes: one call site per `N`, and so one stack per `N` (the
/// extra bytes keep the functions distinct, so that they are not merged).
#[inline(never)]
fn site<const N: usize>(size: usize) {
    drop(black_box(Vec::<u8>::with_capacity(size + N)));
}

const SITES: [fn(usize); 8] = [
    site::<0>, site::<1>, site::<2>, site::<3>, site::<4>, site::<5>, site::<6>, site::<7>,
];

/// Calls itself `levels` more times, then allocates and frees a block at call site `site` (0–7).
#[inline(never)]
fn deep(levels: usize, site: usize, size: usize) {
    if levels > 0 {
        deep(black_box(levels - 1), site, size);
        black_box(levels);
        return;
    }
    SITES[site % SITES.len()](size);
}

fn deep16_at(rate: usize, size: usize, sites: usize) {
    heap_sampler::set_sample_rate(rate);
    for i in 0..DEEP_PAIRS {
        deep(16, i % sites, size);
    }
    heap_sampler::set_sample_rate(heap_sampler::DEFAULT_SAMPLE_RATE);
}

fn deep16(_rng: &mut Rng) {
    deep16_at(4096, 64 << 10, 1);
}

fn deep16x8(_rng: &mut Rng) {
    deep16_at(4096, 64 << 10, 8);
}

fn deep16exact(_rng: &mut Rng) {
    deep16_at(1, 64, 1);
}

type Workload = (&'static str, fn(&mut Rng));

const WORKLOADS: [Workload; 5] = [
    ("json", json),
    ("index", index),
    ("churn", churn),
    ("churn2", churn2),
    ("pairs16", pairs16),
];

/// Workloads that only count instructions (see the module's documentation): run by name, never in rounds.
const COUNTED: [Workload; 3] = [
    ("deep16", deep16),
    ("deep16x8", deep16x8),
    ("deep16exact", deep16exact),
];

fn variants() -> Vec<&'static str> {
    let mut v = vec!["bare", "sampled", "sampled-fp"];
    if cfg!(all(
        feature = "jemalloc-bench",
        target_os = "linux",
        target_arch = "x86_64"
    )) {
        v.extend(["jemalloc", "jemalloc-prof"]);
    }
    v
}

/// Runs one workload in a child process with the given allocator; its wall time in seconds.
fn run_child(workload: &str, variant: &str) -> f64 {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(WORKLOAD_VAR, workload).env(MODE_VAR, variant);
    let conf = if variant == "jemalloc-prof" {
        "prof:true,prof_active:true,lg_prof_sample:19"
    } else {
        "prof:false"
    };
    command.env("_RJEM_MALLOC_CONF", conf);
    let out = command.output().expect("run the workload");
    assert!(
        out.status.success(),
        "{workload}/{variant} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the child prints its time")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if let Ok(workload) = std::env::var(WORKLOAD_VAR) {
        let (_, run) = WORKLOADS
            .iter()
            .chain(&COUNTED)
            .find(|(name, _)| *name == workload)
            .expect("a known workload");
        if std::env::var(MODE_VAR).is_ok_and(|m| m == "sampled-fp") {
            heap_sampler::set_unwinder(heap_sampler::Unwinder::FramePointer);
        }
        let start = Instant::now();
        run(&mut Rng(0x2545_F491_4F6C_DD1D));
        println!("{}", start.elapsed().as_secs_f64());
        return;
    }
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(11);
    let variants = variants();
    println!(
        "{rounds} rounds per workload; median wall time; median of per-round ratios to the baseline"
    );
    for (workload, _) in WORKLOADS {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                times[v].push(run_child(workload, variants[v]));
            }
        }
        let mut line = format!("{workload:<8}");
        for (v, name) in variants.iter().enumerate() {
            let base_name = if name.starts_with("jemalloc") {
                "jemalloc"
            } else {
                "bare"
            };
            let baseline = variants.iter().position(|v| *v == base_name).unwrap_or(0);
            let mut ratios: Vec<f64> = times[v]
                .iter()
                .zip(&times[baseline])
                .map(|(t, b)| t / b)
                .collect();
            let ratio = median(&mut ratios);
            line += &format!(
                "  {name} {:.3}s ({ratio:.3}x)",
                median(&mut times[v].clone())
            );
        }
        println!("{line}");
    }
}
