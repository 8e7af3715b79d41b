//! The axum router (feature `axum`) in a real axum server on loopback, on a multi-thread tokio runtime built
//! by hand, in exact mode (rate 1), so that every figure is checked to the byte: `go tool pprof -raw` reads
//! its `heap` and `peak` over HTTP; an `allocs?seconds=2` delta counts exactly the blocks allocated inside its
//! window; the index page answers HTML and shows the chart that the router's recorder fills; symbols are
//! looked up with a POST; a client that disconnects during a window frees its slot, and windows beyond the
//! bound get 503.

mod common;

use std::alloc::System;
use std::future::IntoFuture;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{PATIENCE, Raw, check_head_and_symbols, request, request_bytes, wait_for};
use heap_sampler::SamplingAllocator;
use heap_sampler::axum::PprofRouter;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const BLOCK: usize = 64 * KIB;
const HELD_BLOCKS: usize = 256;
const PEAK_BLOCKS: usize = 64;

/// Holds 256 blocks of 64 KiB: 16 MiB in use.
#[inline(never)]
fn hold_cache(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..HELD_BLOCKS {
        kept.push(std::hint::black_box(vec![1u8; BLOCK]));
    }
}

/// Holds 64 blocks of 1 MiB, never touched, in a vector of 64 × 24 bytes: far more than anything else this
/// binary holds, so the highest in-use bytes of the process once it is freed.
#[inline(never)]
fn hold_for_peak() -> Vec<Vec<u8>> {
    (0..PEAK_BLOCKS).map(|_| Vec::with_capacity(MIB)).collect()
}

/// What [`hold_for_peak`] holds, in bytes.
const AT_PEAK: i64 = (PEAK_BLOCKS * MIB + PEAK_BLOCKS * size_of::<Vec<u8>>()) as i64;

/// Allocates and frees one 64 KiB block.
#[inline(never)]
fn allocate_in_window() {
    std::hint::black_box(vec![2u8; BLOCK]);
}

/// An axum app on loopback: a route of its own, the pprof router merged at the root and nested under
/// `/admin`, both built by `pprof` (so they share its bound on windows), on a multi-thread runtime of two
/// workers.
struct Served {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
}

impl Served {
    fn start(pprof: &PprofRouter) -> Served {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = {
            // Built inside the runtime, as in an async `main`: the router starts the page's recorder there.
            let _entered = runtime.enter();
            Router::new()
                .route("/", get(|| async { "the service" }))
                .merge(pprof.build())
                .nest("/admin", pprof.build())
        };
        runtime.spawn(axum::serve(listener, app).into_future());
        Served { runtime, addr }
    }

    fn stop(self) {
        self.runtime.shutdown_timeout(PATIENCE);
    }
}

/// The status line, the header (names in lower case: hyper sends axum's as they are stored) and the body of
/// a GET sent as HTTP/1.0, which the server answers and closes.
fn get_path(addr: SocketAddr, path: &str) -> (String, String, Vec<u8>) {
    let response = request_bytes(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let body = common::body(&response).to_vec();
    let head = String::from_utf8_lossy(&response[..response.len() - body.len()]).to_lowercase();
    let (status, header) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_string(), header.to_string(), body)
}

/// A profile fetched from `path`, decoded, after checking its status.
fn profile_at(addr: SocketAddr, path: &str) -> heap_sampler::proto::Profile {
    let (status, header, body) = get_path(addr, path);
    assert_eq!(status, "http/1.0 200 ok", "{path}: {header}");
    assert!(
        header.contains("content-type: application/octet-stream"),
        "{header}"
    );
    common::decode(&body)
}

/// The `allocs?seconds=2` delta: read by `go tool pprof -raw` over HTTP where `go` is installed (with its
/// output, parsed), the profile it fetched decoded from where it saved it; else fetched directly.
fn delta_profile(addr: SocketAddr) -> (heap_sampler::proto::Profile, Option<Raw>) {
    const DELTA: &str = "/debug/pprof/allocs?seconds=2";
    let Some(go) = common::go() else {
        return (profile_at(addr, DELTA), None);
    };
    let dir = common::temp_dir("axum-router-delta");
    let out = common::pprof_saving_to(&go, &["-raw", &format!("http://{addr}{DELTA}")], &dir);
    println!("go tool pprof -raw http://{addr}{DELTA}:\n{out}");
    let saved = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gz"))
        .expect("pprof saved the fetched profile");
    (
        common::decode(&std::fs::read(&saved).unwrap()),
        Some(Raw::parse(&out)),
    )
}

fn default_sample_type(p: &heap_sampler::proto::Profile) -> &str {
    common::string(p, p.default_sample_type)
}

/// `go tool pprof -raw` reads `heap` and `peak` through the router; the same profiles fetched directly
/// show, to the byte, the 16 MiB held and the 64 MiB held at the peak and freed since; the index page, the
/// redirect to it, the nested router, the symbol lookup and the answers to wrong methods and paths.
#[test]
fn the_router_serves_heap_peak_index_and_symbols() {
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut kept = Vec::with_capacity(HELD_BLOCKS);
    hold_cache(&mut kept);
    drop(std::hint::black_box(hold_for_peak()));
    let pprof = PprofRouter::new();
    let served = Served::start(&pprof);
    let addr = served.addr;
    let held = (HELD_BLOCKS as i64, (HELD_BLOCKS * BLOCK) as i64);

    let heap = profile_at(addr, "/debug/pprof/heap");
    common::check_contract(&heap);
    assert_eq!(default_sample_type(&heap), "inuse_space");
    let at = common::at_function(&heap, "hold_cache");
    assert_eq!((at.inuse_objects, at.inuse_space), held);
    let peak = profile_at(addr, "/debug/pprof/peak");
    assert_eq!(default_sample_type(&peak), "inuse_space");
    let at = common::at_function(&peak, "hold_for_peak");
    assert_eq!(
        (at.inuse_objects, at.inuse_space),
        (PEAK_BLOCKS as i64 + 1, AT_PEAK)
    );
    let now = common::at_function(&heap, "hold_for_peak");
    assert_eq!((now.inuse_objects, now.inuse_space), (0, 0));

    if let Some(go) = common::go() {
        let dir = common::temp_dir("axum-router");
        let base = format!("http://{addr}/debug/pprof");
        let out = common::pprof_saving_to(&go, &["-raw", &format!("{base}/heap")], &dir);
        println!(
            "go tool pprof -raw {base}/heap: {} lines",
            out.lines().count()
        );
        let raw = Raw::parse(&out);
        assert!(
            raw.header.ends_with("inuse_space/bytes[dflt]"),
            "{}",
            raw.header
        );
        let at = raw.at("hold_cache");
        assert_eq!((at[2], at[3]), held);
        let out = common::pprof_saving_to(&go, &["-raw", &format!("{base}/peak")], &dir);
        let raw = Raw::parse(&out);
        assert!(
            raw.header.ends_with("inuse_space/bytes[dflt]"),
            "{}",
            raw.header
        );
        assert_eq!(raw.at("hold_for_peak")[3], AT_PEAK);
        std::fs::remove_dir_all(dir).unwrap();
    }

    let (status, header, body) = get_path(addr, "/debug/pprof/");
    assert_eq!(status, "http/1.0 200 ok");
    assert!(
        header.contains("content-type: text/html; charset=utf-8"),
        "{header}"
    );
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("href=\"peak\""),
        "{html}"
    );
    // The index's links are relative: a path without the slash is sent to the one with it.
    let (status, header, _) = get_path(addr, "/debug/pprof");
    assert!(status.starts_with("http/1.0 308"), "{status}");
    assert!(header.contains("location: pprof/\r\n"), "{header}");

    // Nested under a prefix, as an admin router.
    let (status, _, body) = get_path(addr, "/admin/debug/pprof/heap?debug=1");
    assert_eq!(status, "http/1.0 200 ok");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("axum_router::hold_cache"), "{text}");
    let (status, _, body) = get_path(addr, "/admin/debug/pprof/");
    assert_eq!(status, "http/1.0 200 ok");
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains("<title>/admin/debug/pprof/ · heap-sampler</title>")
            && page.contains("go tool pprof http://HOST/admin/debug/pprof/heap "),
        "the page names the path it was asked at: {page}"
    );
    assert_eq!(get_path(addr, "/").2, b"the service", "the app's own route");

    let unknown = request(addr, "GET /debug/pprof/goroutine HTTP/1.0\r\n\r\n");
    assert!(
        unknown.starts_with("HTTP/1.0 404")
            && unknown.contains("this server has heap, allocs and peak"),
        "{unknown}"
    );
    let put = request(addr, "PUT /debug/pprof/heap HTTP/1.0\r\n\r\n").to_lowercase();
    assert!(
        put.starts_with("http/1.0 405")
            && put.contains("x-go-pprof: 1")
            && put.contains("allow: get, head\r\n"),
        "{put}"
    );
    check_head_and_symbols(
        addr,
        hold_cache as fn(&mut Vec<Vec<u8>>) as usize,
        "axum_router::hold_cache",
    );
    served.stop();
    drop(kept);
}

/// Exact mode: a thread allocates a 64 KiB block about every millisecond, recording when each allocation
/// began and ended, before, during and after an `allocs?seconds=2` window, which `go tool pprof -raw` reads
/// over HTTP where `go` is installed. The window runs from the end of
/// its first copy of the table (`time_nanos − duration_nanos`) to the end of its second (`time_nanos`). A
/// block recorded while a copy was being taken may fall on either side of it, so the count lies between the
/// blocks certainly inside and those possibly inside, given that a copy of this process's table takes less
/// than [`COPY`]. In exact mode each block adds exactly its bytes, so the bound is that range, not widened.
#[test]
fn an_allocs_delta_counts_exactly_what_was_allocated_in_its_window() {
    /// Far longer than a copy of the small table of this test process, as in `tests/pprof_server.rs`.
    const COPY: i64 = 25_000_000;
    let _serial = common::serial();
    heap_sampler::set_sample_rate(1);
    let mut kept = Vec::with_capacity(HELD_BLOCKS);
    hold_cache(&mut kept);
    let served = Served::start(&PprofRouter::new());
    let addr = served.addr;

    let stop = AtomicBool::new(false);
    let (delta, times) = std::thread::scope(|s| {
        let allocating = s.spawn(|| {
            let mut times = Vec::with_capacity(20_000);
            while !stop.load(Ordering::Relaxed) {
                let start = common::now_nanos();
                allocate_in_window();
                times.push((start, common::now_nanos()));
                std::thread::sleep(Duration::from_millis(1));
            }
            times
        });
        // Stopped however the request ends, so that a failure is reported rather than waited on.
        let delta = std::panic::catch_unwind(|| delta_profile(addr));
        stop.store(true, Ordering::Relaxed);
        let times = allocating.join().unwrap();
        (
            delta.unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            times,
        )
    });
    let (delta, raw) = delta;
    assert_eq!(default_sample_type(&delta), "alloc_space");
    assert!(
        delta.duration_nanos >= 2_000_000_000,
        "{}",
        delta.duration_nanos
    );
    let (end, start) = (delta.time_nanos, delta.time_nanos - delta.duration_nanos);

    // The cache allocated nothing during the window, and still holds its blocks.
    let held = common::at_function(&delta, "hold_cache");
    assert_eq!(
        held,
        common::Values {
            alloc_objects: 0,
            alloc_space: 0,
            inuse_objects: HELD_BLOCKS as i64,
            inuse_space: (HELD_BLOCKS * BLOCK) as i64,
        }
    );

    let certain = times
        .iter()
        .filter(|&&(a, b)| a > start && b < end - COPY)
        .count();
    let possible = times
        .iter()
        .filter(|&&(a, b)| b > start - COPY && a < end)
        .count();
    let counted = common::at_function(&delta, "allocate_in_window");
    let (low, high) = ((certain * BLOCK) as i64, (possible * BLOCK) as i64);
    println!(
        "delta: {} blocks of 64 KiB counted, {certain}..{possible} in the window ({} allocated in all); \
         alloc_space {} in [{low}, {high}]",
        counted.alloc_objects,
        times.len(),
        counted.alloc_space
    );
    assert!(
        certain > 500,
        "the window holds many blocks: {certain} of {}",
        times.len()
    );
    assert!(
        (certain as i64..=possible as i64).contains(&counted.alloc_objects)
            && counted.alloc_space == counted.alloc_objects * BLOCK as i64,
        "allocate_in_window: {counted:?} outside [{certain}, {possible}] blocks"
    );
    assert!(
        (counted.alloc_objects as usize) < times.len(),
        "blocks allocated outside the window were counted"
    );
    // In-use counts are those of the second copy, taken while the allocating thread still runs. It frees
    // each block before it allocates the next, so at most one block is live at any instant.
    assert!(
        (0..=1).contains(&counted.inuse_objects)
            && counted.inuse_space == counted.inuse_objects * BLOCK as i64,
        "allocate_in_window in use at the window's end: {counted:?}, at most one block"
    );
    if let Some(raw) = raw {
        assert!(
            raw.header.contains("alloc_space/bytes[dflt]"),
            "{}",
            raw.header
        );
        assert_eq!(
            raw.at("allocate_in_window"),
            [
                counted.alloc_objects,
                counted.alloc_space,
                counted.inuse_objects,
                counted.inuse_space
            ],
            "go tool pprof -raw reads the figures of the profile it fetched"
        );
        assert_eq!(
            raw.at("hold_cache"),
            [0, 0, HELD_BLOCKS as i64, (HELD_BLOCKS * BLOCK) as i64]
        );
    }
    served.stop();
    drop(kept);
}

/// At most two windows: two clients ask for an hour-long one and a third gets 503 with the reason; the two
/// disconnect, hyper drops their requests' futures, and with them the windows' slots (and their first copies
/// of the table, held in the same futures) are freed: a new window is answered.
#[test]
fn a_client_that_disconnects_frees_its_window_and_windows_beyond_the_bound_get_503() {
    let _serial = common::serial();
    let pprof = PprofRouter::new().max_windows(2);
    let served = Served::start(&pprof);
    let addr = served.addr;
    let window = "GET /debug/pprof/allocs?seconds=3600 HTTP/1.1\r\nHost: test\r\n\r\n";
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut client = TcpStream::connect(addr).unwrap();
            client.write_all(window.as_bytes()).unwrap();
            client
        })
        .collect();
    let started = wait_for("two windows in progress", || {
        pprof.windows_in_progress() == 2
    });
    eprintln!("two windows in progress after {started:?}");
    let busy = request(
        addr,
        "GET /admin/debug/pprof/allocs?seconds=1 HTTP/1.0\r\n\r\n",
    );
    assert!(
        busy.starts_with("HTTP/1.0 503")
            && busy.contains(
                "2 delta profiles (seconds=N) are in progress; retry when one has finished, or ask \
                 for the profile without seconds"
            ),
        "{busy}"
    );
    assert_eq!(pprof.windows_in_progress(), 2);

    drop(clients);
    let freed = wait_for("the abandoned windows end", || {
        pprof.windows_in_progress() == 0
    });
    eprintln!("both slots free {freed:?} after their clients closed");
    let delta = request(
        addr,
        "GET /debug/pprof/allocs?seconds=1&format=folded HTTP/1.0\r\n\r\n",
    );
    assert!(delta.starts_with("HTTP/1.0 200 OK"), "{delta:.300}");
    assert_eq!(pprof.windows_in_progress(), 0);
    served.stop();

    let none = Served::start(&PprofRouter::new().max_windows(0));
    let refused = request(
        none.addr,
        "GET /debug/pprof/allocs?seconds=1 HTTP/1.0\r\n\r\n",
    );
    assert!(
        refused.starts_with("HTTP/1.0 503")
            && refused.contains("this server takes no delta profiles (seconds=N)"),
        "{refused}"
    );
    none.stop();
}

/// The readings the index page `html` draws: 0 when it has no chart (fewer than two).
fn readings(html: &str) -> usize {
    match html.split_once(" readings, taken every") {
        Some((before, _)) => before.rsplit('>').next().unwrap().parse().unwrap(),
        None => {
            assert!(html.contains("No chart: fewer than two readings"), "{html}");
            0
        }
    }
}

/// The router starts the recorder of the index page's chart on its runtime (the recorders of the other
/// tests' servers ended with their runtimes): once it is built, the page gains a reading, the first taken at
/// once and the next an interval (5 s) later.
#[test]
fn the_index_page_shows_the_chart_the_router_records() {
    let _serial = common::serial();
    let page = |response: heap_sampler::http::Response| String::from_utf8(response.body).unwrap();
    let before = readings(&page(heap_sampler::http::handle("/debug/pprof/", "")));
    let served = Served::start(&PprofRouter::new());
    let mut shown = before;
    let started = wait_for("a new reading on the index page", || {
        let (_, _, body) = get_path(served.addr, "/debug/pprof/");
        shown = readings(&String::from_utf8(body).unwrap());
        shown > before
    });
    eprintln!("{shown} readings on the page after {started:?} ({before} before the router)");
    served.stop();
}
