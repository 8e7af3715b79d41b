//! The in-use bytes over the last minutes, for the chart of the `/debug/pprof/` page: a ring of
//! [`crate::stats()`] readings, taken every few seconds by a task on the runtime of the server that shows the
//! page (the built-in server, or the axum router). The page reads the ring; without a server feature nothing
//! records, and the page has no chart.
//!
//! The ring is a static of atomics, written by one recorder at a time and read by any number of page
//! renderings: neither side takes a lock, so recording never waits for the allocator or a dump, and a
//! reading is a few relaxed loads ([`crate::stats()`]). A reader keeps only the readings that no write
//! overlapped, as a sequence lock does.

use std::sync::OnceLock;
#[cfg(any(feature = "server", feature = "axum"))]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

/// A reading of the in-use bytes, as the chart shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reading {
    /// How long before now it was taken.
    pub(crate) age: Duration,
    /// [`crate::Stats::inuse_bytes`] then.
    pub(crate) inuse_bytes: u64,
}

/// How often the recorder reads the in-use bytes.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);

/// How often readings are taken in this build: every [`INTERVAL`] while a server of the crate runs; never
/// without one.
pub(crate) fn interval() -> Option<Duration> {
    cfg!(any(feature = "server", feature = "axum")).then_some(INTERVAL)
}

/// Readings kept: ten minutes of them, one every [`INTERVAL`].
const READINGS: usize = 120;

/// The readings of the process, shown by every page it serves.
static RING: Ring<READINGS> = Ring::new();

/// Whether a recorder runs: at most one per process writes [`RING`].
#[cfg(any(feature = "server", feature = "axum"))]
static RECORDING: AtomicBool = AtomicBool::new(false);

/// The start of the readings' time: the first reading.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Starts recording the in-use bytes on the runtime of `runtime`, unless a recorder runs already (on this
/// runtime or another): one reading now and one every [`INTERVAL`], until that runtime stops. The runtime
/// must have its timer enabled. Returns whether this call started it.
#[cfg(any(feature = "server", feature = "axum"))]
pub(crate) fn start(runtime: &tokio::runtime::Handle) -> bool {
    // Cheap when a recorder runs, as it is called for every request the axum router answers.
    if RECORDING.load(Ordering::Relaxed) || RECORDING.swap(true, Ordering::Acquire) {
        return false;
    }
    // A runtime shutting down drops the task at once, and with it the flag.
    runtime.spawn(record(Recording));
    true
}

/// Held by the running recorder; dropped with its task (when its runtime stops), it lets a later server
/// start one again. Its writes to the ring happen before the next recorder's.
#[cfg(any(feature = "server", feature = "axum"))]
struct Recording;

#[cfg(any(feature = "server", feature = "axum"))]
impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.store(false, Ordering::Release);
    }
}

#[cfg(any(feature = "server", feature = "axum"))]
async fn record(_recording: Recording) {
    let mut ticks = tokio::time::interval(INTERVAL);
    // After a stall (a blocked runtime thread, a suspended machine) the next reading comes a whole interval
    // later, not in a burst of readings of the same moment.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        RING.push(millis_since_origin(), crate::stats().inuse_bytes);
    }
}

/// Milliseconds since [`ORIGIN`], on the monotonic clock.
fn millis_since_origin() -> u64 {
    let origin = ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The process's readings, oldest first, with their ages now: none when no recorder has run.
pub(crate) fn readings() -> Vec<Reading> {
    let now = millis_since_origin();
    RING.readings()
        .into_iter()
        .map(|(at, inuse_bytes)| Reading {
            age: Duration::from_millis(now.saturating_sub(at)),
            inuse_bytes,
        })
        .collect()
}

/// A fixed-size ring of `(time, bytes)` readings, for one writer at a time and any number of readers.
struct Ring<const N: usize> {
    slots: [Slot; N],
    /// Readings whose write has begun: a writer counts its reading here before it touches the slot.
    started: AtomicU64,
    /// Readings written: reading `i` is in slot `i % N` until reading `i + N` begins.
    published: AtomicU64,
}

struct Slot {
    /// When, in milliseconds since [`ORIGIN`].
    at: AtomicU64,
    /// The in-use bytes then.
    bytes: AtomicU64,
}

impl<const N: usize> Ring<N> {
    const fn new() -> Ring<N> {
        Ring {
            slots: [const {
                Slot {
                    at: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                }
            }; N],
            started: AtomicU64::new(0),
            published: AtomicU64::new(0),
        }
    }

    /// Adds a reading, overwriting the oldest when the ring is full. One writer at a time: `RECORDING`
    /// admits one recorder, and the next begins after the last one's task was dropped.
    #[cfg(any(test, feature = "server", feature = "axum"))]
    fn push(&self, at: u64, bytes: u64) {
        let index = self.published.load(Ordering::Relaxed);
        self.started.store(index + 1, Ordering::Relaxed);
        // A reader that sees any of the slot's new values sees `started` counting it (its acquire fence
        // pairs with this one), and drops the slot.
        fence(Ordering::Release);
        let slot = &self.slots[(index % N as u64) as usize];
        slot.at.store(at, Ordering::Relaxed);
        slot.bytes.store(bytes, Ordering::Relaxed);
        self.published.store(index + 1, Ordering::Release);
    }

    /// The readings `(time, bytes)`, oldest first: the last `N` written, less those being overwritten
    /// while they were read.
    fn readings(&self) -> Vec<(u64, u64)> {
        let published = self.published.load(Ordering::Acquire);
        let first = published.saturating_sub(N as u64);
        let mut read: Vec<(u64, (u64, u64))> = (first..published)
            .map(|i| {
                let slot = &self.slots[(i % N as u64) as usize];
                let at = slot.at.load(Ordering::Relaxed);
                (i, (at, slot.bytes.load(Ordering::Relaxed)))
            })
            .collect();
        fence(Ordering::Acquire);
        // The writer of reading `started - 1` may have overwritten reading `started - 1 - N`, and those
        // before it wrote over older ones; a later writer wrote nothing this reader saw.
        let valid_from = self
            .started
            .load(Ordering::Relaxed)
            .saturating_sub(N as u64);
        read.retain(|&(i, _)| i >= valid_from);
        read.into_iter().map(|(_, reading)| reading).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_readings_oldest_first() {
        let ring = Ring::<4>::new();
        assert!(ring.readings().is_empty());
        for i in 0..3 {
            ring.push(i * 10, i * 100);
        }
        assert_eq!(ring.readings(), [(0, 0), (10, 100), (20, 200)]);
        // Wrapped around twice and a half: the last four, oldest first.
        for i in 3..10 {
            ring.push(i * 10, i * 100);
        }
        assert_eq!(
            ring.readings(),
            [(60, 600), (70, 700), (80, 800), (90, 900)]
        );
    }

    #[test]
    fn a_reading_being_overwritten_is_left_out() {
        let ring = Ring::<4>::new();
        for i in 0..6 {
            ring.push(i, i);
        }
        // A writer has begun reading 6, in the slot of reading 2, the oldest, and written its time.
        ring.started.store(7, Ordering::Relaxed);
        ring.slots[2].at.store(60, Ordering::Relaxed);
        assert_eq!(ring.readings(), [(3, 3), (4, 4), (5, 5)]);
        ring.slots[2].bytes.store(60, Ordering::Relaxed);
        ring.published.store(7, Ordering::Release);
        assert_eq!(ring.readings(), [(3, 3), (4, 4), (5, 5), (60, 60)]);
    }

    #[test]
    fn the_ring_is_small_and_spans_ten_minutes() {
        // Two 8-byte words a reading, and the two counters.
        assert_eq!(size_of::<Ring<READINGS>>(), READINGS * 16 + 16);
        assert!(size_of::<Ring<READINGS>>() <= 4096);
        assert_eq!(INTERVAL * READINGS as u32, Duration::from_secs(600));
    }

    /// The one test that touches the process's recorder and ring.
    #[cfg(any(feature = "server", feature = "axum"))]
    #[test]
    fn one_recorder_runs_until_its_runtime_stops() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let first = runtime();
        assert!(start(first.handle()));
        assert!(!start(first.handle()), "a second recorder started");
        // The first reading is taken as soon as the runtime runs the recorder.
        first.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while RING.readings().is_empty() {
                assert!(Instant::now() < deadline, "no reading within a minute");
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(readings().len(), 1);
        drop(first);
        assert!(
            !RECORDING.load(Ordering::Acquire),
            "the recorder outlived its runtime"
        );

        // With no recorder running, a reading added here is the only writer's; the page draws both.
        RING.push(millis_since_origin(), crate::stats().inuse_bytes + 4096);
        let readings = readings();
        assert_eq!(readings.len(), 2);
        assert!(readings[0].age >= readings[1].age, "{readings:?}");
        let page = crate::http::handle("/debug/pprof/", "");
        let html = String::from_utf8(page.body).unwrap();
        assert!(html.contains("<polyline class=\"inuse\""), "{html}");
        assert!(html.contains("2 readings, taken every 5 s"), "{html}");

        // Another runtime starts one again.
        let second = runtime();
        assert!(start(second.handle()));
        drop(second);
        assert!(!RECORDING.load(Ordering::Acquire));
    }
}
