//! A small built-in HTTP server for the `/debug/pprof` endpoints (feature `server`), for programs that have no
//! HTTP server of their own, as Go's `http.ListenAndServe("localhost:6060", nil)`.
//!
//! It is hyper's HTTP/1 server on a current-thread tokio runtime of its own, with bounded threads,
//! connections, timeouts and delta windows, each window ended when its client disconnects; [`ProfileServer`]
//! documents them for users.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::{Pin, pin};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, mpsc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_io_timeout::TimeoutStream;

use crate::error::Error;
use crate::serving::{self, DEFAULT_MAX_WINDOWS, Slot, Windows};

/// Connections open at once; one more is closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 1024;
/// Threads that build profiles; more requests wait for one (as futures: see `serving`).
const DUMP_THREADS: usize = 4;
/// How long a connection may take to send a whole request header, from when it is accepted or its previous
/// response was sent.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing a response may make no progress (a client that reads nothing).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of a request header (431 beyond it), and of a connection's read buffer: profile requests
/// are a line and a few headers, but a browser may send every cookie it has for `localhost`.
const MAX_HEADER: usize = 64 << 10;
/// The pause after a failed accept that is not the client's doing (no file descriptor left): the pending
/// connections wait in the kernel's backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long [`ProfileServer::stop`] waits for dumps being built; they then finish on their own.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// A running profile server: serves [`crate::http::handle`]'s endpoints on its address until
/// [`ProfileServer::stop`] or drop.
///
/// It is hyper's HTTP/1 server on a current-thread tokio runtime of its own, and meant to be left running, so
/// what it holds is bounded whatever its clients do:
///
/// | what | bound |
/// | --- | --- |
/// | threads | one, `heap-sampler-http`, on which every connection and every delta window is a task; dumps (copying the table, symbolizing, gzip) run on at most 4 more, `heap-sampler-dump`, and wait their turn beyond that |
/// | connections | 1024 open at once; a connection beyond them is accepted and closed at once |
/// | a client that sends nothing | closed when it has not sent a whole request header within 10 s, also between the requests of a kept-alive connection |
/// | a request header | 64 KiB; beyond it 431 |
/// | a client that reads nothing | closed when its response has made no progress for 30 s |
/// | delta windows (`seconds=N`) | 8 at a time, each at most [`crate::http::MAX_SECONDS`]; beyond them 503 |
/// | a symbol lookup's body | 1 MiB, within 10 s; beyond them 413 or 408 |
///
/// A delta window is waited out on a timer, not on a thread. When its client disconnects the window ends at
/// once, as Go's handler stops when its request's context is cancelled: its slot and its copy of the profile
/// are freed. A request that is not HTTP gets 400 (from hyper, with an empty body).
///
/// The server's tasks and buffers are sampled like the rest of the program (a few KiB per connection, freed
/// when it closes); building a profile itself is not.
#[derive(Debug)]
pub struct ProfileServer {
    addr: SocketAddr,
    /// Delta windows in progress, shared with the server.
    windows: Windows,
    /// Tells the server's thread to stop (dropping it does too).
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a profile server on `addr` (`"127.0.0.1:6060"`, `"localhost:0"`, `"[::1]:6060"`; port 0 picks a
/// free one, see [`ProfileServer::addr`]) and returns at once; it serves Go's `/debug/pprof/heap` and
/// `/debug/pprof/allocs` (see [`crate::http`]) on a background thread until the returned handle is stopped
/// or dropped, with bounded threads, connections and windows (see [`ProfileServer`]). Needs the `server`
/// feature.
///
/// ```no_run
/// # fn main() -> Result<(), heap_sampler::Error> {
/// let server = heap_sampler::serve("127.0.0.1:6060")?;
/// println!("go tool pprof http://{}/debug/pprof/heap", server.addr());
/// # Ok(()) }
/// ```
///
/// Only loopback addresses are accepted: a profile shows the program's code and allocation patterns to
/// whoever can connect. To listen on other interfaces, say so with [`serve_non_loopback`].
///
/// # Errors
/// [`Error::NotLoopback`] if `addr` resolves to an address that is not loopback; [`Error::Bind`] if it does
/// not resolve or cannot be listened on (e.g. the port is taken), or the server's thread cannot start.
pub fn serve(addr: &str) -> Result<ProfileServer, Error> {
    start(addr, true)
}

/// As [`serve`], on any address, loopback or not (`"0.0.0.0:6060"`): only where the network is trusted or
/// a firewall admits only the profiler's collectors.
///
/// # Errors
/// [`Error::Bind`] if `addr` does not resolve or cannot be listened on, or the server's thread cannot start.
pub fn serve_non_loopback(addr: &str) -> Result<ProfileServer, Error> {
    start(addr, false)
}

fn start(addr: &str, loopback_only: bool) -> Result<ProfileServer, Error> {
    let bind_error = |source: io::Error| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(bind_error)?.collect();
    if loopback_only && let Some(public) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(Error::NotLoopback(*public));
    }
    let shared = Arc::new(Shared {
        connections: Arc::new(AtomicUsize::new(0)),
        windows: Windows::new(DEFAULT_MAX_WINDOWS),
    });
    let windows = shared.windows.clone();
    let (stop, stopped) = oneshot::channel();
    // The runtime is built, used and dropped on the server's thread alone: dropping a runtime waits for its
    // threads, which tokio refuses to do (it panics) in a caller's async context.
    let (listening, listened) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("heap-sampler-http".into())
        .spawn(move || {
            let (runtime, listener) = match runtime_listening(&addrs) {
                Ok((runtime, listener, local)) => {
                    let _ = listening.send(Ok(local));
                    (runtime, listener)
                }
                Err(error) => {
                    let _ = listening.send(Err(error));
                    return;
                }
            };
            // The index page's chart: the in-use bytes, read on this runtime while it runs.
            crate::history::start(runtime.handle());
            runtime.block_on(until(stopped, accept(listener, shared)));
            // The listener is closed; open connections and windows are dropped with their tasks.
            runtime.shutdown_timeout(STOP_WAIT);
        })
        .map_err(bind_error)?;
    let listened = listened.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the profile server's thread ended before it listened",
        ))
    });
    match listened {
        Ok(local) => Ok(ProfileServer {
            addr: local,
            windows,
            stop: Some(stop),
            thread: Some(thread),
        }),
        Err(error) => {
            let _ = thread.join();
            Err(bind_error(error))
        }
    }
}

/// The server's runtime, with one thread (the caller's, in `block_on`) for connections and windows and at
/// most [`DUMP_THREADS`] for dumps; its listener on the first of `addrs` that can be bound; and that
/// listener's address.
fn runtime_listening(
    addrs: &[SocketAddr],
) -> io::Result<(tokio::runtime::Runtime, TcpListener, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(DUMP_THREADS)
        .thread_name("heap-sampler-dump")
        .build()?;
    let listener = {
        let _entered = runtime.enter();
        listen(addrs)?
    };
    let local = listener.local_addr()?;
    Ok((runtime, listener, local))
}

/// Listens on the first of `addrs` that can be bound, as `std::net::TcpListener::bind` does, with a backlog
/// of [`MAX_CONNECTIONS`] (std's is 128), so that a burst of connections waits to be accepted instead of
/// having its SYNs dropped and retried a second later. In the runtime's context.
fn listen(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any addresses",
    );
    for &addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std does on Unix: a port whose last connections are in TIME_WAIT can be listened on again.
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(MAX_CONNECTIONS as u32),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Runs `work` until `stop` is sent or dropped; `work` is dropped then.
async fn until(mut stop: oneshot::Receiver<()>, work: impl Future<Output = ()>) {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if Pin::new(&mut stop).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        work.as_mut().poll(cx)
    })
    .await;
}

/// What the server's tasks share.
struct Shared {
    /// Connections open.
    connections: Arc<AtomicUsize>,
    /// Delta windows in progress.
    windows: Windows,
}

/// Accepts connections, each served by a task of its own, until dropped.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // A connection reset before it was accepted is that client's affair; anything else (EMFILE,
                // ENFILE, ENOBUFS) would fail again at once, so wait for descriptors or memory to be freed.
                if !matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // At the bound the connection is closed at once, so that the backlog keeps moving.
        if let Some(slot) = Slot::take(&shared.connections, MAX_CONNECTIONS) {
            tokio::spawn(connection(stream, slot, Arc::clone(&shared)));
        }
    }
}

/// Serves one connection until the client closes it, a timeout closes it, or the server stops.
async fn connection(stream: TcpStream, _slot: Slot, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // A write timeout only: hyper reads the connection while a window is waited out, to see the client go,
    // so a read timeout would end the window. Reading the header is bounded by hyper's own timeout.
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move {
            let response = serving::answer(request, &shared.windows).await;
            Ok::<_, Infallible>(response.into_http::<Full<Bytes>>())
        }
    });
    // With half-closed connections not allowed (hyper's default), a client that closes its end while its
    // request is being answered ends the connection, and the answer's future is dropped.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER)
        // `X-Go-Pprof`, as Go writes it; names are case-insensitive, but not to every reader.
        .title_case_headers(true)
        .serve_connection(TokioIo::new(Box::pin(stream)), service)
        .await;
}

impl ProfileServer {
    /// The address the server listens on, with the port chosen when 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delta windows (`…?seconds=N` requests) in progress now: at most 8, beyond which requests for
    /// one get 503. A window is counted from its request until its response is built, and counted out as
    /// soon as the server sees its client disconnect.
    pub fn windows_in_progress(&self) -> usize {
        self.windows.in_progress()
    }

    /// Stops the server: when this returns the listening socket is closed (new connections are refused),
    /// open connections are closed, windows in progress are abandoned, and the server's thread has ended. A
    /// dump being built is waited for at most half a second; after that it finishes on its own thread and
    /// its answer is dropped. Dropping the handle does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProfileServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
