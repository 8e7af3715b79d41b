//! The client side of the tests of HTTP servers: raw requests on loopback, and waiting for what a server
//! does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends one raw HTTP/1.0 request and returns the whole response.
pub fn request(addr: SocketAddr, request: &str) -> String {
    String::from_utf8_lossy(&request_bytes(addr, request.as_bytes())).into_owned()
}

/// How long a test waits for what should take well under a second before it fails: long enough for a
/// loaded machine or a sanitizer build.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Sends `request` as it is and reads the response until the server closes the connection.
pub fn request_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("a response, then the connection closed");
    response
}

/// Polls `done` until it holds, failing after [`PATIENCE`]; returns how long it took.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "{what}: not after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// The body of a whole HTTP/1 response (with `Content-Length`, not chunked), after its header.
pub fn body(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response header");
    &response[end + 4..]
}

/// What every `/debug/pprof` server answers the same way: HEAD gives the headers alone; pprof's remote
/// symbolization, a POST of the address of `function` (named `name`), is answered with its name; a symbol
/// lookup declaring more than the 1 MiB limit gets 413.
pub fn check_head_and_symbols(addr: SocketAddr, function: usize, name: &str) {
    let head = request(addr, "HEAD /debug/pprof/heap?debug=1 HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200 OK") && head.ends_with("\r\n\r\n"),
        "headers only: {head}"
    );
    let address = format!("{function:#x}");
    let symbols = request(
        addr,
        &format!(
            "POST /debug/pprof/symbol HTTP/1.0\r\nContent-Length: {}\r\n\r\n{address}",
            address.len()
        ),
    );
    assert!(
        symbols.starts_with("HTTP/1.0 200 OK") && symbols.contains(&format!("{address} {name}")),
        "{symbols}"
    );
    let large = request(
        addr,
        "POST /debug/pprof/symbol HTTP/1.0\r\nContent-Length: 2000000\r\n\r\n",
    );
    assert!(
        large.starts_with("HTTP/1.0 413") && large.contains("at most 1048576 bytes"),
        "{large}"
    );
}
