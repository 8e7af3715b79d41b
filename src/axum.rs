//! The `/debug/pprof` endpoints as an axum 0.8 [`Router`] (feature `axum`), served on the program's own
//! runtime and port, beside its other routes.
//!
//! [`router`] gives the router with the defaults; [`PprofRouter`] sets its bound on delta windows and reads
//! how many are in progress. It answers what [`crate::http::handle`] answers (the index page, `heap`,
//! `allocs`, `peak`, `symbol`, with their parameters), as the built-in server does:
//!
//! - a delta window (`seconds=N`) is waited out on a tokio timer, holding no thread, and ends as soon as its
//!   client disconnects (hyper drops the request's future): its slot and the window's first copy of the
//!   profile are freed then, as Go's handler stops when its request's context is cancelled. At most 8
//!   windows are in progress at once ([`PprofRouter::max_windows`]); beyond them 503.
//! - dumps (copying the table, symbolizing, gzip) run on the runtime's blocking threads, at most 4 at once in
//!   the process; requests beyond them wait as futures, holding no thread, and give up their turn when their
//!   client goes away.
//! - profiles are read with GET or HEAD; symbols are looked up with a POST to `…/symbol`, whose body is at
//!   most 1 MiB and must arrive within 10 s (413 and 408 beyond); any other method gets 405.
//!
//! The router also starts the recorder of the index page's chart (the in-use bytes every 5 s, in a fixed
//! ring) on the runtime it is built or first serves on, once per process. The runtime must have its timer
//! enabled, as `#[tokio::main]` and `Builder::enable_all` do.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! # runtime.block_on(async {
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .merge(heap_sampler::axum::router()); // /debug/pprof/, /debug/pprof/heap, …
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6060").await?;
//! axum::serve(listener, app).await
//! # })
//! # }
//! ```
//!
//! The router has no state: merge it into an app's `Router` after the app's `with_state`, or nest it under a
//! prefix (`nest("/admin", router())` serves `/admin/debug/pprof/heap`). Profiles show the program's code
//! and its allocation patterns: serve them on loopback, or behind the authentication of the service's other
//! admin routes (a `route_layer` on the router).

use std::sync::Arc;

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::{OriginalUri, Request};
use ::axum::response::{IntoResponse, Redirect};
use ::axum::routing::{any, get};

use crate::serving::{self, DEFAULT_MAX_WINDOWS, Windows};

/// The `/debug/pprof` router with the defaults: `/debug/pprof/` (the index page) and
/// `/debug/pprof/{profile}`, at most 8 delta windows at once. `/debug/pprof` redirects to the index, whose
/// links are relative. See the [module documentation](self).
pub fn router() -> Router {
    PprofRouter::new().build()
}

/// Builds the `/debug/pprof` router with a bound of one's own on delta windows, and reads how many are in
/// progress.
///
/// ```
/// let pprof = heap_sampler::axum::PprofRouter::new().max_windows(2);
/// let app: axum::Router = axum::Router::new().nest("/admin", pprof.build());
/// assert_eq!(pprof.windows_in_progress(), 0);
/// # drop(app);
/// ```
#[derive(Clone, Debug)]
pub struct PprofRouter {
    windows: Windows,
}

impl PprofRouter {
    /// The defaults: at most 8 delta windows at once.
    pub fn new() -> PprofRouter {
        PprofRouter {
            windows: Windows::new(DEFAULT_MAX_WINDOWS),
        }
    }

    /// At most `windows` delta windows (`seconds=N` requests) in progress at once; a request for one more
    /// gets 503, with a message to retry later or to ask without `seconds`. Each window holds a copy of the
    /// bucket table (the profiler's memory, in proportion to its stacks) for its length. 0 refuses every
    /// window, with 503 and a message that says so.
    #[must_use]
    pub fn max_windows(self, windows: usize) -> PprofRouter {
        PprofRouter {
            windows: Windows::new(windows),
        }
    }

    /// The delta windows in progress now, in every router built by this builder (they share the bound): a
    /// window is counted from its request until its response is built, and counted out as soon as its client
    /// disconnects.
    pub fn windows_in_progress(&self) -> usize {
        self.windows.in_progress()
    }

    /// The router: `/debug/pprof/` and `/debug/pprof/{*profile}` (the last path segment names the profile),
    /// and `/debug/pprof`, redirected to `/debug/pprof/`. Called inside a tokio runtime, starts the index
    /// page's recorder there; otherwise the first request does.
    pub fn build(&self) -> Router {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            crate::history::start(&runtime);
        }
        let windows = Arc::new(self.windows.clone());
        let pprof = move |mut request: Request| {
            let windows = Arc::clone(&windows);
            // Nested, the router sees its path without the prefix; the page shows the path asked for.
            if let Some(OriginalUri(uri)) = request.extensions().get::<OriginalUri>().cloned() {
                *request.uri_mut() = uri;
            }
            async move {
                crate::history::start(&tokio::runtime::Handle::current());
                serving::answer(request, &windows).await
            }
        };
        Router::new()
            // Relative, so that it holds under any prefix the router is nested at.
            .route(
                "/debug/pprof",
                get(|| async { Redirect::permanent("pprof/") }),
            )
            .route("/debug/pprof/", any(pprof.clone()))
            .route("/debug/pprof/{*profile}", any(pprof))
    }
}

impl Default for PprofRouter {
    fn default() -> PprofRouter {
        PprofRouter::new()
    }
}

/// A [`crate::http::handle`] answer as axum sends it: its status, [`crate::http::Response::headers`] and
/// body. For handlers of one's own around `handle` and [`crate::http::symbol`].
impl IntoResponse for crate::http::Response {
    fn into_response(self) -> ::axum::response::Response {
        self.into_http::<Body>()
    }
}
