//! Go-compatible `/debug/pprof/heap` and `/debug/pprof/allocs` endpoints, and the profile at the peak, for
//! any HTTP framework.
//!
//! [`handle`] takes a request's path and query string and returns the [`Response`]: status, content type and
//! body. Mount it where Go programs have theirs, and the tools that already read Go services read this one:
//!
//! ```text
//! go tool pprof http://127.0.0.1:6060/debug/pprof/heap            # what holds memory now
//! go tool pprof http://127.0.0.1:6060/debug/pprof/allocs          # where allocation work went, since start
//! go tool pprof http://127.0.0.1:6060/debug/pprof/allocs?seconds=30   # ... during the next 30 s
//! go tool pprof http://127.0.0.1:6060/debug/pprof/peak            # what held memory at the peak
//! curl http://127.0.0.1:6060/debug/pprof/heap?debug=1             # top sites as text
//! curl -o heap.svg http://127.0.0.1:6060/debug/pprof/heap?format=svg  # flamegraph (feature `flamegraph`)
//! ```
//!
//! # Endpoints
//!
//! `heap` and `allocs` serve the same profile, with its four sample types; they differ in the default view,
//! as in Go. `peak` has the same four types, at another moment:
//!
//! | path | default sample type | answers |
//! | --- | --- | --- |
//! | `…/heap` | `inuse_space` | what holds memory now: allocations not yet freed (leaks, caches, bloat) |
//! | `…/allocs` | `alloc_space` | where the allocator's work goes: every allocation since start, freed or not (churn) |
//! | `…/peak` | `inuse_space` | what held memory when the estimated in-use bytes were highest, even after it was freed ([`crate::dump_peak_profile`]): `inuse_*` at the peak, `alloc_*` up to it; the profile's time is the peak's. Not with `seconds` (400) |
//! | `…/` | | a page to look at: the bytes in use over the last minutes (while the built-in server or the axum router runs), the top sites with their error bars, and links to every profile and view |
//! | `…/symbol` | | `num_symbols: 1`; a POST of addresses is answered by [`symbol`] |
//!
//! The last path segment names the profile, so the handler can be mounted under any prefix.
//!
//! # Query parameters
//!
//! | parameter | meaning |
//! | --- | --- |
//! | `seconds=N` | a delta profile: `alloc_*` counted during the next `N` seconds (the response waits that long), `inuse_*` as at the end; `duration_nanos` is the window. `N` is at most [`MAX_SECONDS`] (an hour). As Go's, except that Go also subtracts in-use values |
//! | `debug=1` | the top sites as text ([`crate::report`]'s format) instead of pprof (any positive number does the same, as Go's heap profile does); not with `seconds`, as in Go |
//! | `format=folded` | folded stacks as text ([`crate::folded_stacks`]), for flamegraph and diff tools |
//! | `format=svg` | a flamegraph SVG (`flamegraph_svg`; feature `flamegraph`, else 501) |
//! | `format=proto` | gzipped pprof, the default |
//! | `sample_index=T` | the sample type shown or made default: `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space` |
//!
//! `seconds` also applies to `format=folded` and `format=svg`. Other parameters (such as Go's `gc`) are
//! ignored, as Go does. An invalid value gets status 400 and a message that says what is accepted; so does a
//! window longer than [`MAX_SECONDS`] (Go refuses a window longer than its server's `WriteTimeout` the same
//! way), which would hold the request, and the first copy of the profile, for longer than any client waits.
//!
//! # Mounting it
//!
//! In an axum 0.8 app (feature `axum`), one call gives the router, served on the app's runtime beside its
//! other routes: `/debug/pprof/` and every profile under it, delta windows waited out on a timer and ended
//! as soon as their client disconnects, windows and dumps bounded (see `heap_sampler::axum`):
//!
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! # fn main() -> std::io::Result<()> {
//! # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! # runtime.block_on(async {
//! let app = axum::Router::new().merge(heap_sampler::axum::router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6060").await?;
//! axum::serve(listener, app).await
//! # })
//! # }
//! ```
//!
//! Or, with the `server` feature, `heap_sampler::serve` runs a small server of its own, with bounded threads,
//! connections and windows.
//!
//! Elsewhere, call [`handle`] (and [`symbol`] for a POST to `…/symbol`) from a handler of one's own.
//! [`handle`] blocks: for `seconds=N` for N seconds, otherwise for the few milliseconds a dump takes (the
//! first one reads debug info, longer). In async servers call it from a blocking task. It cannot see the
//! client go away, so a window runs to its end even when nobody waits for it: bound the blocking tasks it may
//! hold (a handler of one's own can also wait out a window on a timer, with a [`crate::DeltaWindow`] and
//! [`crate::HeapSnapshot`]'s renderings, as the built-in server and the axum router do). With hyper 1 (and
//! `http-body-util`):
//!
#![cfg_attr(feature = "server", doc = "```no_run")]
#![cfg_attr(not(feature = "server"), doc = "```ignore")]
//! use http_body_util::{BodyExt, Full, Limited};
//! use hyper::{Method, Request, Response, body::{Bytes, Incoming}};
//!
//! type Error = Box<dyn std::error::Error + Send + Sync>;
//!
//! async fn pprof(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Error> {
//!     let (path, query) = (req.uri().path().to_owned(), req.uri().query().unwrap_or("").to_owned());
//!     let r = if req.method() == Method::POST && path.ends_with("/symbol") {
//!         // pprof looks up here the addresses of a mapping it has no symbols for; bound the body.
//!         let body = Limited::new(req.into_body(), 1 << 20).collect().await?.to_bytes();
//!         tokio::task::spawn_blocking(move || heap_sampler::http::symbol(&body)).await?
//!     } else {
//!         tokio::task::spawn_blocking(move || heap_sampler::http::handle(&path, &query)).await?
//!     };
//!     let mut response = Response::builder().status(r.status);
//!     for (name, value) in r.headers() {
//!         response = response.header(name, value);
//!     }
//!     Ok(response.body(Full::new(Bytes::from(r.body)))?)
//! }
//! // served with hyper::server::conn::http1::Builder::new().serve_connection(io, service_fn(pprof))
//! ```
//!
//! With actix-web 4, the `actix` feature makes [`Response`] a `Responder`: see `heap_sampler::actix`, whose
//! handler is a doctest under that feature.
//!
//! Profiles show the program's code and its allocation patterns: serve them on loopback, or behind the
//! authentication of the rest of the service's admin endpoints.
//!
//! # Continuous profilers
//!
//! Continuous profilers scrape the same endpoints across many instances. Parca (`parca.yaml`):
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: my-service
//!     scrape_interval: 10s
//!     static_configs:
//!       - targets: ["127.0.0.1:6060"]
//!     profiling_config:
//!       pprof_config:
//!         memory: { enabled: true, path: /debug/pprof/allocs }
//!         process_cpu: { enabled: false }
//!         goroutine: { enabled: false }
//!         block: { enabled: false }
//!         mutex: { enabled: false }
//! ```
//!
//! Pyroscope, through Grafana Alloy:
//!
//! ```text
//! pyroscope.scrape "my_service" {
//!   targets    = [{"__address__" = "127.0.0.1:6060", "service_name" = "my-service"}]
//!   forward_to = [pyroscope.write.default.receiver]
//!   profiling_config {
//!     profile.memory      { enabled = true, path = "/debug/pprof/allocs" }
//!     profile.process_cpu { enabled = false }
//!     profile.goroutine   { enabled = false }
//!     profile.block       { enabled = false }
//!     profile.mutex       { enabled = false }
//!   }
//! }
//! ```
//!
//! Both scrape `allocs`, whose `alloc_*` are cumulative as Go's are, and subtract successive scrapes
//! themselves: leave Alloy's `delta` off for memory (its default), or a `seconds=` window would be subtracted
//! twice. The README's "Many instances" section has the Kubernetes discovery for both, the intervals, and
//! what the labels become.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::Write;
use std::num::IntErrorKind;
use std::time::Duration;

use crate::delta::DeltaWindow;
use crate::error::Error;
use crate::report::Site;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::HeapSnapshot;

// The index page; the recorder of its chart fills in its readings.
pub(crate) mod index;

/// What to send back: status, content type and body. Headers as Go's `net/http/pprof` sets them are in
/// [`Response::headers`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// HTTP status code: 200, 400 for an invalid parameter, 404 for an unknown profile, 500 when no profile
    /// can be taken, 501 for a format this build lacks.
    pub status: u16,
    /// The `Content-Type`: `application/octet-stream` for pprof, `image/svg+xml` for flamegraphs,
    /// `text/plain; charset=utf-8` for text, folded stacks and errors, `text/html; charset=utf-8` for the index.
    pub content_type: &'static str,
    /// The `Content-Disposition` of a pprof download (`attachment; filename="heap"`), as Go sends it.
    pub content_disposition: Option<String>,
    /// The body: gzipped pprof, SVG, or UTF-8 text.
    pub body: Vec<u8>,
    /// The methods the path accepts, sent as `Allow` with a 405.
    allow: Option<&'static str>,
}

impl Response {
    /// The response headers as `(name, value)` pairs, as Go sets them: `Content-Type`,
    /// `X-Content-Type-Options: nosniff`, `Content-Disposition` for pprof downloads, and `X-Go-Pprof: 1` on
    /// errors, which tells `go tool pprof` to print the message of the body; `Allow` with a 405.
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        let mut headers = vec![
            ("Content-Type", self.content_type),
            ("X-Content-Type-Options", "nosniff"),
        ];
        if let Some(disposition) = &self.content_disposition {
            headers.push(("Content-Disposition", disposition));
        }
        if self.status >= 400 {
            headers.push(("X-Go-Pprof", "1"));
        }
        if let Some(allow) = self.allow {
            headers.push(("Allow", allow));
        }
        headers
    }

    fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: 200,
            content_type,
            content_disposition: None,
            body,
            allow: None,
        }
    }

    /// A plain-text error: `message` and a newline.
    pub(crate) fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: TEXT,
            content_disposition: None,
            body: format!("{message}\n").into_bytes(),
            allow: None,
        }
    }

    /// The 405 for a method that `path` does not accept: profiles are read with GET or HEAD, symbols are
    /// also looked up with a POST.
    #[cfg(any(feature = "server", feature = "axum"))]
    pub(crate) fn method_not_allowed(path: &str) -> Response {
        let mut response = Response::error(
            405,
            "profiles are read with GET; symbols are looked up with a POST to …/symbol",
        );
        response.allow = Some(if path.ends_with("/symbol") {
            "GET, HEAD, POST"
        } else {
            "GET, HEAD"
        });
        response
    }

    /// The 500 for a profile that could not be taken.
    pub(crate) fn failed(error: &Error) -> Response {
        Response::error(500, &format!("failed to collect profile: {error}"))
    }
}

/// The longest delta window, in seconds, that `seconds=N` may ask for: an hour. Longer ones get 400.
pub const MAX_SECONDS: u64 = 3600;

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers a request for `path` (e.g. `/debug/pprof/heap`) with query string `query` (without the `?`, e.g.
/// `seconds=30`; `""` for none), as Go's `net/http/pprof` does for its heap and allocs profiles, and with the
/// profile at the peak ([`crate::dump_peak_profile`]) at `…/peak`. See the
/// [module documentation](self) for the paths and parameters. Blocks for `seconds`, if given (at most
/// [`MAX_SECONDS`]), and cannot be cancelled meanwhile.
///
/// Never fails: errors become responses (400 for an invalid parameter, with a message; 500 when no
/// [`crate::SamplingAllocator`] is installed). The profiler's own work for the request is not sampled.
pub fn handle(path: &str, query: &str) -> Response {
    let _guard = Guard::enter();
    let request = match parse(path, query) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let window = match request.window() {
        Some(length) => match DeltaWindow::start() {
            Ok(window) => {
                std::thread::sleep(length);
                Some(window)
            }
            Err(error) => return Response::failed(&error),
        },
        None => None,
    };
    request.respond(window)
}

/// The first step of [`handle`], for a server that schedules the rest itself: the request for a profile at
/// `path` with `query`, or the whole response for one that needs no profile (the index, a `symbol` GET) or
/// cannot be served (404, 400, 501).
pub(crate) fn parse(path: &str, query: &str) -> Result<Request, Response> {
    let _guard = Guard::enter();
    let endpoint = match path.rsplit('/').next().unwrap_or("") {
        "heap" => Endpoint::Heap,
        "allocs" => Endpoint::Allocs,
        "peak" => Endpoint::Peak,
        "" => return Ok(Request::page(path)),
        // Go's answer to a GET: symbols can be looked up (with a POST, see `symbol`).
        "symbol" => return Err(Response::ok(TEXT, b"num_symbols: 1\n".to_vec())),
        other => {
            return Err(Response::error(
                404,
                &format!("unknown profile {other:?}: this server has heap, allocs and peak"),
            ));
        }
    };
    let request = Request::parse(endpoint, query)?;
    if request.format == Format::Svg && !cfg!(feature = "flamegraph") {
        // Said at once, before any window is waited for.
        return Err(no_flamegraph());
    }
    Ok(request)
}

/// Answers a POST to `/debug/pprof/symbol` whose body is `body`, as Go's `net/http/pprof` does: the body is
/// hexadecimal addresses joined by `+` (`0x4a1b2c+0x4a1d00`), the answer a line `0x4a1b2c name` for each
/// address a function is known for. `go tool pprof` sends it for the mappings of a profile that do not say
/// they are symbolized (a system library without symbols for some of its addresses, or every mapping when
/// [`crate::set_symbolize`] is off). Mount it for POST beside [`handle`]; the built-in server does.
pub fn symbol(body: &[u8]) -> Response {
    let _guard = Guard::enter();
    let text = String::from_utf8_lossy(body);
    let addresses: Vec<u64> = text
        .split('+')
        .filter_map(|word| {
            let word = word.trim();
            let hex = word.strip_prefix("0x").unwrap_or(word);
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    match crate::symbolize::function_names(&addresses) {
        Ok(names) => {
            let mut out = String::new();
            for (address, name) in names {
                let _ = writeln!(out, "{address:#x} {name}");
            }
            Response::ok(TEXT, out.into_bytes())
        }
        Err(error) => Response::error(500, &format!("failed to look symbols up: {error}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Heap,
    Allocs,
    /// The profile at the peak of the in-use bytes ([`HeapSnapshot::peak`]).
    Peak,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Heap => "heap",
            Endpoint::Allocs => "allocs",
            Endpoint::Peak => "peak",
        }
    }

    fn default_sample_type(self) -> SampleType {
        match self {
            Endpoint::Heap | Endpoint::Peak => SampleType::InuseSpace,
            Endpoint::Allocs => SampleType::AllocSpace,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Proto,
    Text,
    Folded,
    Svg,
    /// The index page, with the heap's top sites.
    Page,
}

/// A parsed request for a profile, or for the index page.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    endpoint: Endpoint,
    seconds: Option<u64>,
    format: Format,
    sample_type: SampleType,
    /// The page's path as asked for, for [`Format::Page`]; empty otherwise.
    page_path: String,
}

impl Request {
    /// Parses the query as Go's handler does (the first value of each parameter counts; an empty value is
    /// no value), with a 400 response for an invalid one.
    fn parse(endpoint: Endpoint, query: &str) -> Result<Request, Response> {
        let mut params: HashMap<Cow<'_, str>, Cow<'_, str>> = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            params.entry(key).or_insert(value);
        }
        let param = |name: &str| {
            params
                .get(name)
                .map(|v| v.as_ref())
                .filter(|v| !v.is_empty())
        };
        let bad = |message: &str| Response::error(400, message);
        let too_long = || {
            bad(&format!(
                r#"invalid value for "seconds" - must be at most {MAX_SECONDS}"#
            ))
        };

        let seconds = match param("seconds") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=MAX_SECONDS).contains(&n) => Some(n),
                Ok(1..) => return Err(too_long()),
                Err(e) if *e.kind() == IntErrorKind::PosOverflow => return Err(too_long()),
                _ => {
                    return Err(bad(
                        r#"invalid value for "seconds" - must be a positive integer"#,
                    ));
                }
            },
        };
        let debug = match param("debug") {
            None => 0,
            Some(v) => v.parse::<u32>().map_err(|_| {
                bad(r#"invalid value for "debug" - must be 0 (pprof) or a positive number (text)"#)
            })?,
        };
        let format = match param("format") {
            None if debug > 0 => Format::Text,
            None | Some("proto") => Format::Proto,
            Some("folded") => Format::Folded,
            Some("svg") => Format::Svg,
            Some(_) => {
                return Err(bad(
                    r#"invalid value for "format" - must be proto, folded or svg"#,
                ));
            }
        };
        if debug > 0 && format != Format::Text {
            return Err(bad("debug and format params are incompatible"));
        }
        if debug > 0 && seconds.is_some() {
            return Err(bad("seconds and debug params are incompatible"));
        }
        if endpoint == Endpoint::Peak && seconds.is_some() {
            return Err(bad(
                "the peak profile has no delta: it is what was in use at the highest in-use bytes so \
                 far; ask heap or allocs with seconds for a window",
            ));
        }
        let sample_type = match param("sample_index") {
            None => endpoint.default_sample_type(),
            Some(v) => v
                .parse::<SampleType>()
                .map_err(|e| bad(&format!(r#"invalid value for "sample_index" - {e}"#)))?,
        };
        Ok(Request {
            endpoint,
            seconds,
            format,
            sample_type,
            page_path: String::new(),
        })
    }

    /// The index page: it shows the heap's sites, largest in use first. Its query is ignored.
    fn page(path: &str) -> Request {
        Request {
            endpoint: Endpoint::Heap,
            seconds: None,
            format: Format::Page,
            sample_type: SampleType::InuseSpace,
            page_path: path.to_owned(),
        }
    }

    /// The delta window asked for with `seconds`, if any: [`Request::respond`] wants it begun this long ago.
    pub(crate) fn window(&self) -> Option<Duration> {
        self.seconds.map(Duration::from_secs)
    }

    /// Answers the request. `window` is the delta window begun [`Request::window`] ago, for a request that
    /// has one (`None` otherwise); it ends now. Errors become a 500.
    pub(crate) fn respond(&self, window: Option<DeltaWindow>) -> Response {
        let _guard = Guard::enter();
        self.serve(window)
            .unwrap_or_else(|error| Response::failed(&error))
    }

    /// The snapshot of the window, or of the heap now, rendered as asked.
    fn serve(&self, window: Option<DeltaWindow>) -> Result<Response, Error> {
        let t = self.sample_type;
        let snapshot = match (window, self.endpoint) {
            (Some(window), _) => window.finish(),
            (None, Endpoint::Peak) => HeapSnapshot::peak(),
            (None, _) => HeapSnapshot::current(),
        };
        let snapshot = match (self.format, snapshot) {
            // The page says why it has no sites, and shows the rest.
            (Format::Page, Err(error)) => return Ok(index(Err(error), &self.page_path)),
            (_, snapshot) => snapshot?,
        }
        .with_default_sample_type(t);
        match self.format {
            Format::Proto => {
                let mut response = Response::ok("application/octet-stream", snapshot.into_pprof()?);
                let suffix = if self.seconds.is_some() { "-delta" } else { "" };
                response.content_disposition = Some(format!(
                    r#"attachment; filename="{}{suffix}""#,
                    self.endpoint.name()
                ));
                Ok(response)
            }
            Format::Text => {
                let mut sites = snapshot.sites();
                sites.sort_by_key(|site| Reverse(site_value(site, t)));
                let text = snapshot.render_sites(&sites, sites.len());
                Ok(Response::ok(TEXT, text.into_bytes()))
            }
            Format::Folded => Ok(Response::ok(TEXT, snapshot.folded_stacks(t).into_bytes())),
            Format::Svg => self.svg(&snapshot),
            Format::Page => Ok(index(Ok(snapshot), &self.page_path)),
        }
    }

    #[cfg(feature = "flamegraph")]
    fn svg(&self, snapshot: &HeapSnapshot) -> Result<Response, Error> {
        let mut title = format!("{}: {}", self.endpoint.name(), self.sample_type);
        if let Some(seconds) = self.seconds {
            let _ = write!(title, ", delta over {seconds} s");
        }
        let svg = snapshot.flamegraph_titled(self.sample_type, &title)?;
        Ok(Response::ok("image/svg+xml", svg))
    }

    #[cfg(not(feature = "flamegraph"))]
    fn svg(&self, _snapshot: &HeapSnapshot) -> Result<Response, Error> {
        Ok(no_flamegraph())
    }
}

/// The 501 for `format=svg` in a build without the `flamegraph` feature.
fn no_flamegraph() -> Response {
    Response::error(
        501,
        "format=svg needs heap-sampler's `flamegraph` feature; use format=folded with a flamegraph \
         tool, or build with features = [\"flamegraph\"]",
    )
}

fn site_value(site: &Site, t: SampleType) -> i64 {
    match t {
        SampleType::AllocObjects => site.alloc_objects,
        SampleType::AllocSpace => site.alloc_space,
        SampleType::InuseObjects => site.inuse_objects,
        SampleType::InuseSpace => site.inuse_space,
    }
}

/// The index page, with the sites of `snapshot` (the heap now), or the error that kept it from being taken.
fn index(snapshot: Result<HeapSnapshot, Error>, path: &str) -> Response {
    let profile = snapshot.map(|snapshot| (snapshot.sites(), snapshot.sample_rate()));
    Response::ok(
        "text/html; charset=utf-8",
        index::page_now(profile, path).into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, query: &str) -> Result<Request, String> {
        Request::parse(endpoint, query)
            .map_err(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim()))
    }

    #[test]
    fn queries_parse_as_go_reads_them() {
        assert_eq!(
            parse(Endpoint::Allocs, "seconds=30&gc=1&seconds=5"),
            Ok(Request {
                endpoint: Endpoint::Allocs,
                seconds: Some(30),
                format: Format::Proto,
                sample_type: SampleType::AllocSpace,
                page_path: String::new(),
            })
        );
        let text = parse(Endpoint::Heap, "debug=1&seconds=").unwrap();
        assert_eq!(
            (text.format, text.seconds, text.sample_type),
            (Format::Text, None, SampleType::InuseSpace)
        );
        let folded = parse(Endpoint::Heap, "format=folded&sample_index=alloc_objects").unwrap();
        assert_eq!(
            (folded.format, folded.sample_type),
            (Format::Folded, SampleType::AllocObjects)
        );
        assert_eq!(
            parse(Endpoint::Heap, "debug=0").unwrap().format,
            Format::Proto
        );
    }

    #[test]
    fn bad_parameters_are_explained() {
        for (query, message) in [
            (
                "seconds=0",
                r#"400 invalid value for "seconds" - must be a positive integer"#,
            ),
            (
                "seconds=-3",
                r#"400 invalid value for "seconds" - must be a positive integer"#,
            ),
            (
                "seconds=1.5",
                r#"400 invalid value for "seconds" - must be a positive integer"#,
            ),
            (
                "seconds=3601",
                r#"400 invalid value for "seconds" - must be at most 3600"#,
            ),
            (
                "seconds=100000",
                r#"400 invalid value for "seconds" - must be at most 3600"#,
            ),
            (
                "seconds=99999999999999999999",
                r#"400 invalid value for "seconds" - must be at most 3600"#,
            ),
            (
                "debug=x",
                r#"400 invalid value for "debug" - must be 0 (pprof) or a positive number (text)"#,
            ),
            (
                "format=png",
                r#"400 invalid value for "format" - must be proto, folded or svg"#,
            ),
            (
                "debug=1&seconds=2",
                "400 seconds and debug params are incompatible",
            ),
            (
                "debug=1&format=svg",
                "400 debug and format params are incompatible",
            ),
        ] {
            assert_eq!(
                parse(Endpoint::Heap, query),
                Err(message.to_string()),
                "{query}"
            );
        }
        assert_eq!(
            parse(Endpoint::Allocs, "seconds=3600").map(|r| r.window()),
            Ok(Some(Duration::from_secs(MAX_SECONDS)))
        );
        let sample = parse(Endpoint::Heap, "sample_index=space").unwrap_err();
        assert!(
            sample.starts_with(
                r#"400 invalid value for "sample_index" - unknown sample type "space""#
            ),
            "{sample}"
        );
    }
}
