//! What the built-in server (feature `server`) and the axum router (feature `axum`) share: answering a request
//! for the `/debug/pprof` endpoints on a tokio runtime, with delta windows waited out on a timer rather than a
//! thread, a bounded count of windows in progress, and a bounded count of dumps being built.
//!
//! Everything here is a future that may be dropped at any await, as hyper drops a request's future when its
//! client disconnects: what a request holds (its window's slot, the window's first copy of the table) is
//! freed then, and a dump already running on a blocking thread finishes there and is dropped.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::Method;
use hyper::body::{Body, Bytes};
use tokio::sync::Semaphore;

use crate::delta::DeltaWindow;
use crate::http::{self, Response};

/// Delta windows waited out at once by default; each holds a copy of the bucket table. More get 503.
pub(crate) const DEFAULT_MAX_WINDOWS: usize = 8;
/// Dumps built at once on the runtime's blocking threads, by every server of the process: copying the table,
/// symbolizing, gzip. More requests wait for a permit as futures, holding no thread, and give up their place
/// when their client goes away.
const DUMP_PERMITS: usize = 4;
/// How long a symbol lookup's body may take to arrive.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of a symbol lookup's body: pprof sends the addresses of one profile.
pub(crate) const MAX_SYMBOL_REQUEST: usize = 1 << 20;

/// The permits of [`DUMP_PERMITS`].
static DUMPS: Semaphore = Semaphore::const_new(DUMP_PERMITS);

/// One of a bounded count of places (a connection, a window), given back when dropped: also when the task
/// holding it is dropped because its client went away or the server stopped.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A place in `count`, if fewer than `max` are taken.
    pub(crate) fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(count)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The delta windows (`seconds=N`) of one server: those in progress, and the most allowed at once.
#[derive(Clone, Debug)]
pub(crate) struct Windows {
    in_progress: Arc<AtomicUsize>,
    max: usize,
}

impl Windows {
    /// No window in progress, at most `max` at once.
    pub(crate) fn new(max: usize) -> Windows {
        Windows {
            in_progress: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The windows in progress now: counted from their request until their response is built, and counted
    /// out as soon as their request's future is dropped.
    pub(crate) fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }

    /// Why a request for one more window is refused (503), and what to do instead.
    fn refusal(&self) -> String {
        match self.max {
            0 => "this server takes no delta profiles (seconds=N); ask for the profile without seconds"
                .to_string(),
            max => format!(
                "{max} delta profiles (seconds=N) are in progress; retry when one has finished, or ask \
                 for the profile without seconds"
            ),
        }
    }
}

/// Answers one request for the `/debug/pprof` endpoints, with any body type (hyper's, axum's): a GET or HEAD
/// as [`http::handle`] does, with a delta window waited out on a timer; a POST to `…/symbol` with
/// [`http::symbol`], its body bounded in size and time; 405 otherwise.
pub(crate) async fn answer<B>(request: hyper::Request<B>, windows: &Windows) -> Response
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let path = request.uri().path().to_owned();
    match *request.method() {
        Method::GET | Method::HEAD => {
            let query = request.uri().query().unwrap_or("").to_owned();
            profile(&path, &query, windows).await
        }
        Method::POST if path.ends_with("/symbol") => symbol(request.into_body()).await,
        _ => Response::method_not_allowed(&path),
    }
}

/// Answers a GET as [`http::handle`] does, with a delta window waited out on a timer.
async fn profile(path: &str, query: &str, windows: &Windows) -> Response {
    let request = match http::parse(path, query) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let window = match request.window() {
        None => None,
        Some(length) => {
            let Some(slot) = Slot::take(&windows.in_progress, windows.max) else {
                return Response::error(503, &windows.refusal());
            };
            let started = match blocking(DeltaWindow::start).await {
                Ok(Ok(started)) => started,
                Ok(Err(error)) => return Response::failed(&error),
                Err(response) => return response,
            };
            tokio::time::sleep(length).await;
            Some((started, slot))
        }
    };
    blocking(move || {
        let (window, _slot) = window.unzip();
        request.respond(window)
    })
    .await
    .unwrap_or_else(|response| response)
}

/// Answers a POST to `…/symbol` with [`http::symbol`].
async fn symbol<B>(body: B) -> Response
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let too_large = || {
        Response::error(
            413,
            &format!(
                "a symbol lookup's body is at most {MAX_SYMBOL_REQUEST} bytes; send its addresses in \
                 several requests"
            ),
        )
    };
    // A declared length is refused before anything is read.
    if body.size_hint().lower() > MAX_SYMBOL_REQUEST as u64 {
        return too_large();
    }
    let body = Limited::new(body, MAX_SYMBOL_REQUEST).collect();
    match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => {
            let body = body.to_bytes();
            blocking(move || http::symbol(&body))
                .await
                .unwrap_or_else(|response| response)
        }
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => too_large(),
        Ok(Err(error)) => Response::error(400, &format!("cannot read the request body: {error}")),
        Err(_) => Response::error(
            408,
            &format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Runs `work` on one of the runtime's blocking threads once one of the [`DUMP_PERMITS`] is free; a 500 if it
/// panicked or the runtime stopped first. The permit is held until `work` ends, also when the caller has gone.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    let failed = |error: &dyn std::fmt::Display| {
        Response::error(500, &format!("failed to collect profile: {error}"))
    };
    // Never closed: the semaphore is a static that nothing closes.
    let permit = DUMPS.acquire().await.map_err(|error| failed(&error))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|error| failed(&error))
}

impl Response {
    /// The response as the `http` crate's type, with [`Response::headers`], for hyper (`B` = `Full<Bytes>`)
    /// or axum (`B` = its `Body`).
    pub(crate) fn into_http<B: From<Vec<u8>> + Default>(self) -> hyper::Response<B> {
        let mut builder = hyper::Response::builder().status(self.status);
        for (name, value) in self.headers() {
            builder = builder.header(name, value);
        }
        builder.body(B::from(self.body)).unwrap_or_else(|_| {
            // Only a status or header value that HTTP cannot carry; the handler makes none.
            let mut fallback = hyper::Response::new(B::default());
            *fallback.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            fallback
        })
    }
}
