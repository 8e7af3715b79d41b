//! A small built-in HTTP server for the `/debug/pprof` endpoints (feature `server`), on tiny_http, for
//! programs that have no HTTP server of their own, as Go's `http.ListenAndServe("localhost:6060", nil)`.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crate::Error;

/// Requests answered at once; more get 503. A delta profile holds its request for its window.
const MAX_IN_FLIGHT: usize = 8;

/// A running profile server: serves [`crate::http::handle`] on its address until [`ProfileServer::stop`] or
/// drop. Each request runs on a thread of its own, so a `seconds=30` delta does not hold up a `heap`
/// request. The server's threads, and tiny_http's, are sampled like the rest of the program (a few KiB per
/// connection, freed when it closes); building a profile itself is not.
#[derive(Debug)]
pub struct ProfileServer {
    addr: SocketAddr,
    /// A second handle on the listening socket, to shut it down.
    listener: Option<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a profile server on `addr` (`"127.0.0.1:6060"`, `"localhost:0"`, `"[::1]:6060"`; port 0 picks a
/// free one, see [`ProfileServer::addr`]) and returns at once; it serves Go's `/debug/pprof/heap` and
/// `/debug/pprof/allocs` (see [`crate::http`]) on a background thread until the returned handle is stopped
/// or dropped. Needs the `server` feature.
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
/// not resolve or cannot be listened on (e.g. the port is taken).
pub fn serve(addr: &str) -> Result<ProfileServer, Error> {
    start(addr, true)
}

/// As [`serve`], on any address, loopback or not (`"0.0.0.0:6060"`): only where the network is trusted or
/// a firewall admits only the profiler's collectors.
///
/// # Errors
/// [`Error::Bind`] if `addr` does not resolve or cannot be listened on.
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
    let listener = TcpListener::bind(&addrs[..]).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let control = listener.try_clone().map_err(bind_error)?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| bind_error(io::Error::other(e)))?;
    let thread = std::thread::Builder::new()
        .name("heap-sampler-http".into())
        .spawn(move || {
            let in_flight = Arc::new(AtomicUsize::new(0));
            while let Ok(request) = server.recv() {
                dispatch(request, &in_flight);
            }
        })
        .map_err(bind_error)?;
    Ok(ProfileServer {
        addr: local,
        listener: Some(control),
        thread: Some(thread),
    })
}

/// Answers `request` on a thread of its own, or with 503 when too many are in flight.
fn dispatch(request: tiny_http::Request, in_flight: &Arc<AtomicUsize>) {
    if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = request.respond(error_response(
            503,
            format!(
                "{MAX_IN_FLIGHT} profile requests are in progress; retry when one has finished\n"
            ),
        ));
        return;
    }
    /// Counts the request out when its thread ends, or when it cannot start.
    struct InFlight(Arc<AtomicUsize>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let counted = InFlight(Arc::clone(in_flight));
    let _ = std::thread::Builder::new()
        .name("heap-sampler-http-request".into())
        .spawn(move || {
            let _counted = counted;
            respond(request);
        });
}

/// A plain-text error with `X-Go-Pprof: 1`, so that `go tool pprof` prints its message (as for the
/// handler's own errors).
fn error_response(status: u16, message: String) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_string(message).with_status_code(status);
    for (name, value) in [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("X-Go-Pprof", "1"),
    ] {
        if let Ok(header) = tiny_http::Header::from_bytes(name, value) {
            response.add_header(header);
        }
    }
    response
}

/// The most bytes of a symbol lookup's body that are read: pprof sends the addresses of one profile.
const MAX_SYMBOL_REQUEST: u64 = 1 << 20;

fn respond(mut request: tiny_http::Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let answer = match request.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => crate::http::handle(path, query),
        tiny_http::Method::Post if path.ends_with("/symbol") => {
            let mut body = Vec::new();
            let read = io::Read::read_to_end(
                &mut io::Read::take(request.as_reader(), MAX_SYMBOL_REQUEST),
                &mut body,
            );
            if read.is_err() {
                return;
            }
            crate::http::symbol(&body)
        }
        _ => {
            let _ = request.respond(error_response(
                405,
                "profiles are read with GET; symbols are looked up with a POST to /debug/pprof/symbol\n"
                    .into(),
            ));
            return;
        }
    };
    let headers: Vec<tiny_http::Header> = answer
        .headers()
        .into_iter()
        .filter_map(|(name, value)| tiny_http::Header::from_bytes(name, value).ok())
        .collect();
    let mut response = tiny_http::Response::from_data(answer.body).with_status_code(answer.status);
    for header in headers {
        response.add_header(header);
    }
    let _ = request.respond(response);
}

impl ProfileServer {
    /// The address the server listens on, with the port chosen when 0 was asked for.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server: the listening socket is closed when this returns (new connections are refused) and
    /// the server's thread has ended. Requests already being answered (a delta profile's window) finish on
    /// their own threads. Dropping the handle does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(listener) = self.listener.take() {
            // SAFETY: `listener` owns a valid socket descriptor for the duration of the call. Shutting a
            // listening socket down makes it refuse connections and wakes tiny_http's thread blocked in
            // `accept`, which then ends and closes its own handle on the socket.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
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
