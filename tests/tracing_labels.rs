//! Spans as heap labels (features `tracing` and `axum`): a real axum server on a multi-thread tokio runtime,
//! whose middleware puts each request in an `info_span!("request", http.route = …)` as tower-http's
//! `TraceLayer` does, with `HeapLabelsLayer` choosing `http.route`. In exact mode each route's in-use bytes
//! by label are exactly what its requests hold, on whichever workers polled them, and zero once freed.

mod common;

use std::alloc::System;
use std::cell::Cell;
use std::future::{Future, IntoFuture};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use axum::routing::{delete, put};
use heap_sampler::SamplingAllocator;
use heap_sampler::tracing::HeapLabelsLayer;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[global_allocator]
static ALLOC: SamplingAllocator<System> = SamplingAllocator::new(System);

/// The labels this binary's spans carry: the route, as `TraceLayer` spans name it, and a tenant.
fn install_layer() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let layer = HeapLabelsLayer::new().field("http.route").field("tenant");
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber");
    });
}

const SMALL: &str = "/small/{slot}";
const LARGE: &str = "/large/{slot}";
const HELD: &str = "/held";
const SMALL_BLOCKS: usize = 4;
const SMALL_SIZE: usize = 1_000;
const LARGE_BLOCKS: usize = 3;
const LARGE_SIZE: usize = 50_000;
const WORKERS: usize = 4;
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 8;

/// What the handlers hold, by request slot, and on which workers each slot's handler ran. The slots' room is
/// reserved before any request, so that a request's span is charged for its blocks alone.
struct Store {
    slots: Vec<Mutex<Vec<Vec<u8>>>>,
    /// Bit `i` of slot `s`: the handler of slot `s` ran on worker `i`.
    workers: Vec<AtomicU64>,
}

impl Store {
    fn new(slots: usize) -> Store {
        let most = SMALL_BLOCKS.max(LARGE_BLOCKS);
        Store {
            slots: (0..slots)
                .map(|_| Mutex::new(Vec::with_capacity(most)))
                .collect(),
            workers: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Holds `blocks` blocks of `size` bytes in `slot`, yielding to the runtime after each: the rest of the
    /// request may run on another worker.
    async fn hold(&self, slot: usize, blocks: usize, size: usize) -> StatusCode {
        for _ in 0..blocks {
            self.note_worker(slot);
            let block = vec![0x5a; size];
            self.slots[slot].lock().unwrap().push(block);
            YieldNow(false).await;
        }
        self.note_worker(slot);
        StatusCode::NO_CONTENT
    }

    fn note_worker(&self, slot: usize) {
        if let Some(worker) = WORKER.get() {
            self.workers[slot].fetch_or(1 << worker, Relaxed);
        }
    }
}

thread_local! {
    /// The runtime thread's number, given when it starts.
    static WORKER: Cell<Option<u32>> = const { Cell::new(None) };
}

fn number_runtime_thread() {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    WORKER.set(Some(NEXT.fetch_add(1, Relaxed) % 64));
}

/// Yields once, without allocating: wakes itself and returns `Pending`, so the runtime queues the task
/// behind the others, where an idle worker may take it.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The rest of the request runs in a span named by its route, as tower-http's `TraceLayer` makes with
/// `make_span_with`.
async fn request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let span = tracing::info_span!("request", http.route = route);
    next.run(request).instrument(span).await
}

async fn hold_small(State(store): State<Arc<Store>>, Path(slot): Path<usize>) -> StatusCode {
    store.hold(slot, SMALL_BLOCKS, SMALL_SIZE).await
}

async fn hold_large(State(store): State<Arc<Store>>, Path(slot): Path<usize>) -> StatusCode {
    store.hold(slot, LARGE_BLOCKS, LARGE_SIZE).await
}

async fn release(State(store): State<Arc<Store>>) -> StatusCode {
    for slot in &store.slots {
        slot.lock().unwrap().clear();
    }
    StatusCode::NO_CONTENT
}

/// One HTTP/1.1 request on its own connection, read to the end: the server has closed the connection, so the
/// request's future, its response and its span are gone.
fn request(address: SocketAddr, method: &str, path: &str) {
    let mut stream = TcpStream::connect(address).expect("connect to the server");
    // A stuck server fails the test rather than hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response, to the end");
    assert!(
        response.starts_with("HTTP/1.1 204"),
        "{method} {path}: {response}"
    );
}

/// In-use bytes and objects of each route label.
fn in_use_by_route() -> Vec<(String, i64, i64)> {
    let p = common::profile();
    common::check_contract(&p);
    let mut routes: Vec<_> = common::by_label(&p, "http.route")
        .into_iter()
        .map(|(route, v)| (route, v.inuse_space, v.inuse_objects))
        .collect();
    routes.sort();
    routes
}

fn in_use_of(routes: &[(String, i64, i64)], route: &str) -> (i64, i64) {
    routes
        .iter()
        .find(|(r, ..)| r == route)
        .map(|&(_, bytes, objects)| (bytes, objects))
        .unwrap_or_else(|| panic!("no allocation labelled http.route={route}: {routes:?}"))
}

/// Exact mode. Four clients send 32 concurrent requests to four workers, alternating the two routes; each
/// handler holds its blocks, yielding between them. Each route's label holds exactly its requests' blocks,
/// byte for byte and object for object, whichever workers polled them, and nothing once a request to a third
/// route frees them. Rounds repeat until handlers have run on two workers and one request has moved between
/// workers halfway, which the runtime's work stealing does within a few rounds.
#[test]
fn routes_hold_exactly_their_requests_bytes_on_every_worker() {
    let _serial = common::serial();
    install_layer();
    heap_sampler::set_sample_rate(1);
    let slots = CLIENTS * REQUESTS_PER_CLIENT;
    let store = Arc::new(Store::new(slots));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .on_thread_start(number_runtime_thread)
        .enable_io()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route(SMALL, put(hold_small))
        .route(LARGE, put(hold_large))
        .route(HELD, delete(release))
        .layer(from_fn(request_span))
        .with_state(store.clone());
    let server = runtime.spawn(axum::serve(listener, app).into_future());

    const MOST_ROUNDS: usize = 50;
    let (mut workers_used, mut moved) = (0u64, 0);
    for round in 1..=MOST_ROUNDS {
        for workers in &store.workers {
            workers.store(0, Relaxed);
        }
        let (mut small, mut large) = (0, 0);
        for client in 0..CLIENTS {
            for i in 0..REQUESTS_PER_CLIENT {
                if (client + i) % 2 == 0 {
                    small += 1;
                } else {
                    large += 1;
                }
            }
        }
        std::thread::scope(|scope| {
            for client in 0..CLIENTS {
                scope.spawn(move || {
                    for i in 0..REQUESTS_PER_CLIENT {
                        let slot = client * REQUESTS_PER_CLIENT + i;
                        let route = if (client + i) % 2 == 0 {
                            "small"
                        } else {
                            "large"
                        };
                        request(address, "PUT", &format!("/{route}/{slot}"));
                    }
                });
            }
        });
        let held = in_use_by_route();
        let small_held = (
            (small * SMALL_BLOCKS * SMALL_SIZE) as i64,
            (small * SMALL_BLOCKS) as i64,
        );
        let large_held = (
            (large * LARGE_BLOCKS * LARGE_SIZE) as i64,
            (large * LARGE_BLOCKS) as i64,
        );
        assert_eq!(
            in_use_of(&held, SMALL),
            small_held,
            "round {round}: {held:?}"
        );
        assert_eq!(
            in_use_of(&held, LARGE),
            large_held,
            "round {round}: {held:?}"
        );

        request(address, "DELETE", HELD);
        let freed = in_use_by_route();
        for route in [SMALL, LARGE, HELD] {
            assert_eq!(
                in_use_of(&freed, route),
                (0, 0),
                "round {round}, {route}: {freed:?}"
            );
        }

        let masks: Vec<u64> = store.workers.iter().map(|w| w.load(Relaxed)).collect();
        workers_used |= masks.iter().fold(0, |all, mask| all | mask);
        moved += masks.iter().filter(|mask| mask.count_ones() > 1).count();
        if round == 1 {
            println!("round 1, in use by http.route (bytes, objects) while held: {held:?}");
            println!("round 1, after DELETE {HELD}: {freed:?}");
        }
        if workers_used.count_ones() >= 2 && moved > 0 {
            println!(
                "{round} round(s): handlers ran on {} workers; {moved} request(s) moved between workers",
                workers_used.count_ones()
            );
            break;
        }
        assert!(
            round < MOST_ROUNDS,
            "after {round} rounds, handlers ran on workers {workers_used:#b} and {moved} moved"
        );
    }
    server.abort();
    drop(runtime);
}

/// Past the cap on label sets, a span that needs a new set labels nothing: its allocations are sampled
/// without labels and counted in `Stats::dropped_labels`, while spans whose set is kept still label theirs.
#[test]
fn spans_past_the_label_set_cap_are_counted_as_dropped() {
    let _serial = common::serial();
    install_layer();
    heap_sampler::set_sample_rate(1);
    let kept_span = tracing::info_span!("work", tenant = "kept");
    heap_sampler::set_max_label_sets(heap_sampler::stats().label_sets);
    let over_span = tracing::info_span!("work", tenant = "over");
    let before = heap_sampler::stats();
    let over = over_span.in_scope(|| vec![0u8; 3000]);
    let kept = kept_span.in_scope(|| vec![0u8; 5000]);
    let after = heap_sampler::stats();
    heap_sampler::set_max_label_sets(heap_sampler::DEFAULT_MAX_LABEL_SETS);
    assert_eq!(after.dropped_labels - before.dropped_labels, 1);
    assert_eq!(after.label_sets, before.label_sets);
    let p = common::profile();
    let tenants = common::by_label(&p, "tenant");
    assert_eq!(tenants.keys().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(tenants["kept"].inuse_space, 5000);
    drop((over, kept));
}
