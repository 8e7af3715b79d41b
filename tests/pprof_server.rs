//! The built-in server (feature `server`) read by the real client: `go tool pprof -raw` against the live
//! `/debug/pprof/heap` and a two-second `/debug/pprof/allocs?seconds=2` delta while a thread allocates; the
//! server's loopback rule and clean stop; and its bounds: abandoned delta windows end and free their slots,
//! idle connections hold no threads, connections beyond the bound are closed, silent ones and ones that
//! read nothing time out, and what is not HTTP gets 400.

mod common;

use std::alloc::System;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, Raw, check_head_and_symbols, request, request_bytes, wait_for};
use heap_sampler::SamplingAllocator;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

const RATE: usize = 64 * 1024;
const BLOCK: usize = 64 * 1024;
const HELD_BLOCKS: usize = 1024;

/// Holds 1,024 blocks of 64 KiB: 64 MiB in use, allocated before any request.
#[inline(never)]
fn hold_cache(kept: &mut Vec<Vec<u8>>) {
    for _ in 0..HELD_BLOCKS {
        kept.push(std::hint::black_box(vec![1u8; BLOCK]));
    }
}

/// Allocates and frees one 64 KiB block.
#[inline(never)]
fn allocate_in_window() {
    std::hint::black_box(vec![2u8; BLOCK]);
}

/// The relative standard error of the estimate of `n` sampled blocks of `BLOCK` bytes at `RATE`:
/// sqrt((1 − p) / (n·p)), p = 1 − e^(−BLOCK/RATE).
fn relative_error(n: usize) -> f64 {
    let p = 1.0 - (-(BLOCK as f64) / RATE as f64).exp();
    ((1.0 - p) / (n.max(1) as f64 * p)).sqrt()
}

#[test]
fn go_tool_pprof_reads_the_live_heap_and_an_allocs_delta() {
    let _serial = common::serial();
    let Some(go) = common::go() else { return };
    heap_sampler::set_seed(5);
    heap_sampler::set_sample_rate(RATE);
    let mut kept = Vec::with_capacity(HELD_BLOCKS);
    hold_cache(&mut kept);
    let server = heap_sampler::serve("127.0.0.1:0").expect("serve on loopback");
    let base = format!("http://{}/debug/pprof", server.addr());
    let dir = common::temp_dir("pprof-server");

    let heap_out = common::pprof_saving_to(&go, &["-raw", &format!("{base}/heap")], &dir);
    println!("go tool pprof -raw {base}/heap:\n{heap_out}");
    let heap = Raw::parse(&heap_out);
    assert!(
        heap.header.ends_with("inuse_space/bytes[dflt]"),
        "{}",
        heap.header
    );
    // 1,024 blocks of 64 KiB at a 64 KiB rate: relative standard error sqrt((1−p)/(n·p)) = 2.4 %; 5 σ.
    let held = heap.at("hold_cache");
    let truth = (HELD_BLOCKS * BLOCK) as f64;
    let bound = 5.0 * relative_error(HELD_BLOCKS) * truth;
    assert!(
        (held[3] as f64 - truth).abs() < bound,
        "hold_cache inuse_space {} vs {truth} ± {bound}",
        held[3]
    );

    // A thread allocates one block per millisecond, recording when each allocation started and ended,
    // before, during and after the delta's window.
    let stop = AtomicBool::new(false);
    let (delta_out, times) = std::thread::scope(|s| {
        let allocating = s.spawn(|| {
            let mut times = Vec::with_capacity(10_000);
            while !stop.load(Ordering::Relaxed) {
                let start = common::now_nanos();
                allocate_in_window();
                times.push((start, common::now_nanos()));
                std::thread::sleep(Duration::from_millis(1));
            }
            times
        });
        let delta_dir = dir.join("delta");
        std::fs::create_dir_all(&delta_dir).unwrap();
        let out = common::pprof_saving_to(
            &go,
            &["-raw", &format!("{base}/allocs?seconds=2")],
            &delta_dir,
        );
        stop.store(true, Ordering::Relaxed);
        (out, allocating.join().unwrap())
    });
    println!("go tool pprof -raw {base}/allocs?seconds=2:\n{delta_out}");
    let delta = Raw::parse(&delta_out);
    assert!(
        delta.header.contains("alloc_space/bytes[dflt]"),
        "{}",
        delta.header
    );
    // The window, from the profile pprof fetched and saved: it ends at time_nanos, after the second copy
    // of the table, and began duration_nanos earlier, after the first copy was complete.
    let saved = std::fs::read_dir(dir.join("delta"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gz"))
        .expect("pprof saved the fetched profile");
    let p = common::decode(&std::fs::read(&saved).unwrap());
    let (end, start) = (p.time_nanos, p.time_nanos - p.duration_nanos);
    assert!(p.duration_nanos >= 2_000_000_000, "{}", p.duration_nanos);

    // The cache allocated nothing during the window: no alloc_* at all, and its in-use bytes are what the
    // heap profile showed (the same bucket, untouched).
    let held_delta = delta.at("hold_cache");
    assert_eq!(
        held_delta,
        [0, 0, held[2], held[3]],
        "alloc_* counted in the window only, inuse_* current"
    );

    // Blocks recorded between the copies are counted; a block recorded while a copy was being taken (well
    // under 25 ms for this small table) may fall on either side, so the truth lies between the blocks
    // certainly inside and those possibly inside. Each bound is widened by 5 σ of its own estimate.
    const COPY: i64 = 25_000_000;
    let certain = times
        .iter()
        .filter(|&&(a, b)| a > start && b < end - COPY)
        .count();
    let possible = times
        .iter()
        .filter(|&&(a, b)| b > start - COPY && a < end)
        .count();
    let estimate = delta.at("allocate_in_window")[1] as f64;
    let low = (certain * BLOCK) as f64 * (1.0 - 5.0 * relative_error(certain));
    let high = (possible * BLOCK) as f64 * (1.0 + 5.0 * relative_error(possible));
    println!(
        "delta: {certain}..{possible} blocks of 64 KiB in the window ({} blocks in all); alloc_space \
         estimate {estimate} in [{low:.0}, {high:.0}]",
        times.len()
    );
    assert!(
        certain > 500,
        "the window holds many blocks: {certain} of {}",
        times.len()
    );
    assert!(
        low <= estimate && estimate <= high,
        "allocate_in_window alloc_space {estimate} outside [{low:.0}, {high:.0}]"
    );

    // A bad parameter: pprof fails and prints the server's message.
    let bad = std::process::Command::new(&go)
        .args(["tool", "pprof", "-raw", &format!("{base}/allocs?seconds=0")])
        .env("PPROF_TMPDIR", &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && stderr.contains(
                r#"400 Bad Request - invalid value for "seconds" - must be a positive integer"#
            ),
        "{stderr}"
    );
    drop(kept);
    server.stop();
    std::fs::remove_dir_all(dir).unwrap();
}

/// The threads of this process whose names start with `prefix`, and all of its threads.
fn threads(prefix: &str) -> (usize, usize) {
    let (mut named, mut all) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let Ok(comm) = std::fs::read_to_string(task.unwrap().path().join("comm")) else {
            continue; // The thread ended meanwhile.
        };
        all += 1;
        named += usize::from(comm.starts_with(prefix));
    }
    (named, all)
}

/// A line of `/proc/self/status`, such as `VmRSS`, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Ten clients ask for an hour-long delta window and go away (the most allowed, as Go's delta windows are
/// bounded by its server's `WriteTimeout`; `seconds=100000` is refused at once): eight windows start, the
/// two beyond the bound get 503, and once the clients have closed their sockets every window ends and frees
/// its slot, so that windows and profiles are served again at once. Once, nine abandoned `seconds=100000`
/// requests locked out every scrape for 28 hours.
#[test]
fn abandoned_windows_end_and_free_their_slots() {
    let _serial = common::serial();
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    let too_long = request(
        addr,
        "GET /debug/pprof/allocs?seconds=100000 HTTP/1.0\r\n\r\n",
    );
    assert!(
        too_long.starts_with("HTTP/1.0 400")
            && too_long.contains(r#"invalid value for "seconds" - must be at most 3600"#),
        "{too_long}"
    );

    let window = "GET /debug/pprof/allocs?seconds=3600 HTTP/1.1\r\nHost: test\r\n\r\n";
    let clients: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut client = TcpStream::connect(addr).unwrap();
            client.write_all(window.as_bytes()).unwrap();
            client
        })
        .collect();
    let started = wait_for("eight windows in progress", || {
        server.windows_in_progress() == 8
    });
    eprintln!("eight windows in progress after {started:?}");
    let busy = request(addr, "GET /debug/pprof/allocs?seconds=1 HTTP/1.0\r\n\r\n");
    assert!(
        busy.starts_with("HTTP/1.0 503")
            && busy.contains("delta profiles (seconds=N) are in progress")
            && busy.contains("X-Go-Pprof: 1"),
        "{busy}"
    );
    assert_eq!(server.windows_in_progress(), 8);

    drop(clients);
    let freed = wait_for("the abandoned windows end", || {
        server.windows_in_progress() == 0
    });
    eprintln!("ten abandoned windows: all slots free {freed:?} after their clients closed");

    let start = Instant::now();
    let heap = request(addr, "GET /debug/pprof/heap HTTP/1.0\r\n\r\n");
    eprintln!("then a heap profile in {:?}", start.elapsed());
    assert!(heap.starts_with("HTTP/1.0 200 OK"), "{heap:.200}");
    let start = Instant::now();
    let delta = request(
        addr,
        "GET /debug/pprof/allocs?seconds=1&debug=0&format=folded HTTP/1.0\r\n\r\n",
    );
    eprintln!("and a one-second window in {:?}", start.elapsed());
    assert!(delta.starts_with("HTTP/1.0 200 OK"), "{delta:.300}");
    assert_eq!(server.windows_in_progress(), 0);
    server.stop();
}

/// 300 connections that send nothing hold no thread each: a profile is still served at once, and the server
/// has a few threads in all (one for the connections, at most four building profiles).
#[test]
fn idle_connections_hold_no_threads() {
    let _serial = common::serial();
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    // The first profile reads the binary's symbols: before the count of memory.
    let first = request(addr, "GET /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    assert!(first.starts_with("HTTP/1.0 200 OK"), "{first:.200}");
    let rss_before = status_kb("VmRSS");
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Connections are accepted in order: the profile's request is answered after all 300 were.
    let start = Instant::now();
    let heap = request(addr, "GET /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    let answered = start.elapsed();
    assert!(heap.starts_with("HTTP/1.0 200 OK"), "{heap:.200}");
    let (server_threads, all) = threads("heap-sampler-");
    let rss = status_kb("VmRSS");
    eprintln!(
        "300 idle connections: heap answered in {answered:?}; {server_threads} server threads, {all} threads \
         in the process; VmRSS {rss_before} kB before them, {rss} kB with them"
    );
    assert!(
        (1..=32).contains(&server_threads),
        "{server_threads} server threads"
    );
    drop(idle);
    server.stop();
}

/// The open-file limit, from `/proc/self/limits`.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap_or(u64::MAX)
}

/// Reads until the server closes `stream` (EOF or reset); fails after [`PATIENCE`].
fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    received
}

/// Connections beyond the bound (1024) are closed as soon as they are accepted, those within it are served,
/// and a place freed by a client that goes away is taken by the next.
#[test]
fn connections_beyond_the_bound_are_closed() {
    let _serial = common::serial();
    // Both ends of each connection are in this process.
    if open_files_limit() < 4096 {
        eprintln!("skipped: fewer than 4096 open files allowed");
        return;
    }
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    let start = Instant::now();
    let mut open: Vec<TcpStream> = (0..1024 + 50)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for beyond in &mut open[1024..] {
        assert_eq!(closed_by_server(beyond), b"", "closed without an answer");
    }
    eprintln!(
        "1074 connections: the 50 beyond the bound closed within {:?}",
        start.elapsed()
    );
    // The first, open all along, is served (well within the 10 s it may take to send its header).
    let first = &mut open[0];
    first
        .write_all(b"GET /debug/pprof/ HTTP/1.0\r\n\r\n")
        .unwrap();
    let index = closed_by_server(first);
    assert!(index.starts_with(b"HTTP/1.0 200 OK"), "{index:?}");
    // Clients leave; new connections take their places (a request may find none free until the server has
    // seen a client go).
    open.truncate(1000);
    let freed = wait_for("a place freed by the clients that left", || {
        request(addr, "GET /debug/pprof/ HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 200 OK")
    });
    eprintln!("a new connection served {freed:?} after 24 more clients left");
    drop(open);
    server.stop();
}

/// A connection that sends no request header, or only part of one, is closed after the header timeout
/// (10 s), as is a kept-alive one that sends no second request.
#[test]
fn silent_connections_are_closed() {
    // Independent of the profiler's settings: it runs beside the other tests.
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut partial = TcpStream::connect(addr).unwrap();
    partial
        .write_all(b"GET /debug/pprof/heap HTTP/1.1\r\nHost: te")
        .unwrap();
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET /debug/pprof/ HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answers = Vec::new();
    for stream in [&mut silent, &mut partial, &mut kept] {
        answers.push(closed_by_server(stream));
        eprintln!("closed after {:?}", start.elapsed());
    }
    let kept_answer = String::from_utf8_lossy(&answers[2]);
    assert!(kept_answer.starts_with("HTTP/1.1 200 OK"), "{kept_answer}");
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "closed before the header timeout: {:?}",
        start.elapsed()
    );
    server.stop();
}

/// A client that pipelines requests and reads none of the answers is closed once the server's write has made
/// no progress for the write timeout (30 s): the client's own writes, stalled since the server stopped
/// reading requests, then fail. Without the timeout both sides would wait for ever.
#[test]
fn a_client_that_reads_nothing_is_closed() {
    // Independent of the profiler's settings: it runs beside the other tests.
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(server.addr()).unwrap();
    let start = Instant::now();
    let (done, writer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Index pages of several KiB each: far more than the sockets' buffers hold, were they all answered.
        let chunk = "GET /debug/pprof/ HTTP/1.1\r\nHost: test\r\n\r\n".repeat(1024);
        let mut sent = 0usize;
        let result = loop {
            if let Err(error) = client.write_all(chunk.as_bytes()) {
                break Err(error);
            }
            sent += chunk.len();
            if sent > 256 << 20 {
                break Ok(sent);
            }
        };
        let _ = done.send(result);
    });
    let result = writer
        .recv_timeout(PATIENCE + Duration::from_secs(30))
        .expect("the client's writes still blocked: the server did not close the connection");
    eprintln!(
        "a client that reads nothing: its writes failed after {:?}: {result:?}",
        start.elapsed()
    );
    let error = result.expect_err("the server stopped reading requests");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{error}"
    );
    server.stop();
}

/// A request hyper cannot parse gets 400: raw bytes in the path, a line that is not HTTP, a TLS hello.
#[test]
fn garbage_requests_get_400() {
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    for garbage in [
        &b"GET /debug/pprof/\xff\xfe HTTP/1.1\r\nHost: test\r\n\r\n"[..],
        b"GET /debug/pprof/heap\x00 HTTP/1.1\r\n\r\n",
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let response = request_bytes(addr, garbage);
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request"),
            "{:?}: {text}",
            String::from_utf8_lossy(garbage)
        );
    }
    server.stop();
}

#[test]
fn the_server_stays_on_loopback_and_stops_cleanly() {
    let _serial = common::serial();
    let error = heap_sampler::serve("0.0.0.0:0").expect_err("not loopback");
    assert!(
        matches!(error, heap_sampler::Error::NotLoopback(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("serve_non_loopback"), "{error}");

    let server = heap_sampler::serve("localhost:0").unwrap();
    let addr = server.addr();
    assert!(addr.ip().is_loopback(), "{addr}");
    let text = request(addr, "GET /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(text.contains("heap profile: sample rate"), "{text}");
    let bad = request(addr, "GET /debug/pprof/heap?seconds=x HTTP/1.0\r\n\r\n");
    assert!(
        bad.starts_with("HTTP/1.0 400")
            && bad.contains("invalid value for \"seconds\" - must be a positive integer"),
        "{bad}"
    );
    let post = request(addr, "POST /debug/pprof/heap HTTP/1.0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.0 405") && post.contains("Allow: GET, HEAD\r\n"),
        "{post}"
    );
    assert!(
        post.contains("X-Go-Pprof: 1"),
        "go tool pprof prints the message: {post}"
    );

    let head = request(addr, "HEAD /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    assert!(
        head.contains("Content-Length: "),
        "hyper gives the length: {head}"
    );
    check_head_and_symbols(
        addr,
        hold_cache as fn(&mut Vec<Vec<u8>>) as usize,
        "pprof_server::hold_cache",
    );

    let taken = heap_sampler::serve(&addr.to_string()).expect_err("port in use");
    assert!(taken.to_string().contains("choose a free port"), "{taken}");

    server.stop();
    let refused = TcpStream::connect(addr).expect_err("stopped: the port is closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // Dropping the handle stops it too; asking for any address explicitly is allowed.
    let dropped = heap_sampler::serve_non_loopback("127.0.0.1:0").unwrap();
    let addr = dropped.addr();
    assert!(request(addr, "GET /debug/pprof/ HTTP/1.0\r\n\r\n").contains("href=\"allocs\""));
    drop(dropped);
    assert!(TcpStream::connect(addr).is_err());
}

/// A program whose `main` is async (`#[tokio::main]`) starts the server inside its runtime, gets an error
/// for a port that is taken, and stops the server there: the server's own runtime is never built, dropped or
/// waited for on the caller's thread, where tokio would panic.
#[test]
fn the_server_starts_and_stops_inside_an_async_runtime() {
    let _serial = common::serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = heap_sampler::serve("127.0.0.1:0").unwrap();
        let addr = server.addr();
        let taken = heap_sampler::serve(&addr.to_string()).expect_err("port in use");
        assert!(matches!(taken, heap_sampler::Error::Bind { .. }), "{taken}");
        let index = request(addr, "GET /debug/pprof/ HTTP/1.0\r\n\r\n");
        assert!(index.starts_with("HTTP/1.0 200 OK"), "{index}");
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    });
}

/// Serving requests leaves the in-use estimate where it was: memory that the server's tasks and threads
/// allocate (sampled like the program's) is subtracted again when they free it, on whichever thread. Exact
/// mode: 200 requests once left about 370 KB of phantom in-use here (frees on threads inside the profiler
/// were not subtracted); what outlives the server (thread-local buffers) is a few KiB. In a process of its
/// own: the in-use estimate is the whole process's, and this binary's other servers hold connections open for
/// seconds.
#[test]
fn requests_leave_in_use_where_it_was() {
    if !common::is_child() {
        common::run_child(
            "requests_leave_in_use_where_it_was",
            Duration::from_secs(300),
        );
        return;
    }
    heap_sampler::set_sample_rate(1);
    let server = heap_sampler::serve("127.0.0.1:0").unwrap();
    let addr = server.addr();
    let get = || request(addr, "GET /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    assert!(get().starts_with("HTTP/1.0 200 OK"));
    let before = heap_sampler::stats().inuse_bytes;
    for _ in 0..200 {
        assert!(get().starts_with("HTTP/1.0 200 OK"));
    }
    server.stop();
    // A dump thread may outlive the server briefly: wait for its frees.
    let bound = 64 << 10;
    wait_for("the in-use estimate within 64 KiB of where it was", || {
        heap_sampler::stats().inuse_bytes.saturating_sub(before) < bound
    });
}
