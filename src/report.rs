//! A short text report of the top allocation sites, for logs and for readers without `go tool pprof`.

use std::collections::HashMap;
use std::fmt::Write;

use crate::error::Error;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::{HeapSnapshot, Origin};
use crate::symbolize::symbols::{Frame, Resolved, is_std};
use crate::table::buckets::Counts;

/// The heap figures of one allocation site: the innermost frame of a stack that is outside the standard
/// library (`std`, `core`, `alloc`), so that `Vec::push` or `sync_channel` is charged to the line that called
/// it. All values are unbiased estimates in bytes or counts; the space figures come with their standard
/// errors, estimated from the samples behind them.
///
/// Two sites' space figures are independent estimates: their difference has the standard error
/// `sqrt(a_stderr² + b_stderr²)`, so a gap of more than about twice that is unlikely to be sampling noise.
#[derive(Clone, Debug)]
pub struct Site {
    /// Demangled function name, without hash suffix.
    pub function: String,
    /// Source path, or "" when unknown.
    pub file: String,
    /// Source line, or 0 when unknown.
    pub line: u32,
    /// Bytes allocated at this site and not yet freed.
    pub inuse_space: i64,
    /// Objects allocated at this site and not yet freed.
    pub inuse_objects: i64,
    /// Bytes allocated at this site since the program started.
    pub alloc_space: i64,
    /// Objects allocated at this site since the program started.
    pub alloc_objects: i64,
    /// One standard error of [`Site::inuse_space`], in bytes: the square root of the unbiased estimate of
    /// its variance, the sum over the sampled allocations still in use of `s²·(1 − p)/p²` (`s` the size,
    /// `p` the probability it had of being sampled). 0 in exact mode. Resting on few samples (see
    /// [`Site::samples`]), it is itself rough.
    pub inuse_space_stderr: f64,
    /// One standard error of [`Site::alloc_space`], in bytes: as [`Site::inuse_space_stderr`], over every
    /// sampled allocation of the site.
    pub alloc_space_stderr: f64,
    /// The sampled allocations behind [`Site::alloc_space`]. Below about 10, the estimate and its standard
    /// error are both rough: the estimate's distribution is skewed, and the error bar can be far off.
    pub samples: u64,
    /// The sampled allocations behind [`Site::inuse_space`]: those of [`Site::samples`] not freed yet.
    pub inuse_samples: u64,
}

// By value: standard errors are finite, never NaN, so equality is an equivalence.
impl Site {
    /// Every field, the standard errors by their bits: what equality compares.
    fn fields(&self) -> (&str, &str, u32, [i64; 4], [u64; 4]) {
        (
            &self.function,
            &self.file,
            self.line,
            [
                self.inuse_space,
                self.inuse_objects,
                self.alloc_space,
                self.alloc_objects,
            ],
            [
                self.inuse_space_stderr.to_bits(),
                self.alloc_space_stderr.to_bits(),
                self.samples,
                self.inuse_samples,
            ],
        )
    }
}

impl PartialEq for Site {
    fn eq(&self, other: &Site) -> bool {
        self.fields() == other.fields()
    }
}

impl Eq for Site {}

/// The frame a stack is charged to: its innermost frame outside the standard library, or, where an address
/// of the program was not symbolized before one was found, that address (as pprof shows it); a stack of
/// the standard library alone is charged to its innermost frame.
fn site_frame(resolved: &Resolved, locations: &[u32]) -> Option<Frame> {
    for &i in locations {
        let location = &resolved.locations[i as usize];
        if location.frames.is_empty() {
            return Some(Frame::address(location.address));
        }
        if let Some(frame) = location.frames.iter().find(|f| !is_std(&f.name)) {
            return Some(frame.clone());
        }
    }
    locations
        .first()
        .and_then(|&i| resolved.locations[i as usize].frames.first().cloned())
}

/// The allocation sites of a symbolized snapshot, largest in-use first (then largest allocated), or, when
/// `by_allocated`, largest allocated first (then largest in use).
fn sites(resolved: &Resolved, by_allocated: bool) -> Vec<Site> {
    let mut by_site: HashMap<Frame, Counts> = HashMap::new();
    for sample in &resolved.samples {
        if let Some(frame) = site_frame(resolved, &sample.locations) {
            by_site.entry(frame).or_default().merge(&sample.counts);
        }
    }
    let mut sites: Vec<Site> = by_site
        .into_iter()
        .map(|(frame, counts)| {
            let [alloc_objects, alloc_space, inuse_objects, inuse_space] = counts.values();
            let (alloc_space_stderr, inuse_space_stderr) = counts.space_stderr();
            Site {
                function: frame.name.to_string(),
                file: frame.file.to_string(),
                line: frame.line,
                inuse_space,
                inuse_objects,
                alloc_space,
                alloc_objects,
                inuse_space_stderr,
                alloc_space_stderr,
                samples: counts.alloc_samples,
                inuse_samples: counts.inuse_samples,
            }
        })
        .collect();
    // Largest first by the view's figure, then by the other; then by name, for a stable order.
    let key = |s: &Site| match by_allocated {
        false => (s.inuse_space, s.alloc_space),
        true => (s.alloc_space, s.inuse_space),
    };
    sites.sort_by(|a, b| {
        (key(b), &a.function, &a.file, a.line).cmp(&(key(a), &b.function, &b.file, b.line))
    });
    sites
}

/// Formats a byte count with a binary unit: `512 B`, `1.50 KiB`, `27.45 MiB`.
pub(crate) fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Figures resting on fewer sampled allocations than this are marked in the report: below it the estimate's
/// distribution is skewed and its standard error rough.
pub(crate) const FEW_SAMPLES: u64 = 10;

/// Whether a figure of `bytes` resting on `samples` sampled allocations is marked as resting on few (see
/// [`FEW_SAMPLES`]); a zero figure is not.
pub(crate) fn few_samples(bytes: i64, samples: u64) -> bool {
    samples < FEW_SAMPLES && bytes != 0
}

/// Renders the `top` sites as a table: in-use bytes and objects, allocated bytes and objects, function and
/// `file:line`, after a header line with the sample rate. Each space figure has its standard error beside it
/// (`± x`), and a `*` when fewer than [`FEW_SAMPLES`] sampled allocations are behind it; in exact mode
/// (rate 1) the figures are exact and have none.
pub(crate) fn render(sites: &[Site], rate: usize, top: usize) -> String {
    let exact = rate <= 1;
    let mut out = String::new();
    let rate_text = human_bytes(i64::try_from(rate).unwrap_or(i64::MAX));
    let _ = if exact {
        writeln!(
            out,
            "heap profile: sample rate {rate_text} ({} sites); exact: every allocation recorded",
            sites.len()
        )
    } else {
        writeln!(
            out,
            "heap profile: sample rate {rate_text} ({} sites); estimates ± one standard error, from the \
             samples taken; * fewer than {FEW_SAMPLES} samples behind the figure",
            sites.len()
        )
    };
    let space = |bytes: i64, stderr: f64, samples: u64| {
        if exact {
            return human_bytes(bytes);
        }
        let few = if few_samples(bytes, samples) {
            "*"
        } else {
            " "
        };
        format!(
            "{} ± {}{few}",
            human_bytes(bytes),
            human_bytes(stderr.round() as i64)
        )
    };
    let width = if exact { 12 } else { 26 };
    let _ = writeln!(
        out,
        "{:>width$} {:>12} {:>width$} {:>12}  site",
        "inuse_space", "inuse_objs", "alloc_space", "alloc_objs"
    );
    for site in sites.iter().take(top) {
        let file = site.file.rsplit('/').next().unwrap_or(&site.file);
        let _ = writeln!(
            out,
            "{:>width$} {:>12} {:>width$} {:>12}  {} ({}:{})",
            space(
                site.inuse_space,
                site.inuse_space_stderr,
                site.inuse_samples
            ),
            site.inuse_objects,
            space(site.alloc_space, site.alloc_space_stderr, site.samples),
            site.alloc_objects,
            site.function,
            file,
            site.line
        );
    }
    if sites.len() > top {
        let _ = writeln!(out, "... {} more sites", sites.len() - top);
    }
    out
}

impl HeapSnapshot {
    /// The allocation sites of the snapshot, largest first in the snapshot's view: in-use bytes (then
    /// allocated) for the heap now and the peak, allocated bytes (then in use) for a delta window, whose
    /// view is what was allocated during it (and for any snapshot whose default sample type was set to
    /// `alloc_*`, see [`HeapSnapshot::with_default_sample_type`]). See [`Site`] for how a stack is charged
    /// to a site; the sites' values add up to the snapshot's totals.
    pub fn sites(&self) -> Vec<Site> {
        let _guard = Guard::enter();
        sites(&self.resolved, self.by_allocated())
    }

    /// Whether the snapshot's view is what was allocated rather than what is in use.
    fn by_allocated(&self) -> bool {
        matches!(
            self.default_sample_type,
            SampleType::AllocSpace | SampleType::AllocObjects
        )
    }

    /// A text report of the `top` allocation sites of the snapshot (see [`HeapSnapshot::sites`]), with the
    /// sample rate and the noise bound in its first line: in-use bytes and objects, allocated bytes and
    /// objects, function and `file:line` of each; for logs, and for readers without `go tool pprof`, as
    /// Go's `?debug=1` text. A peak's report first says what it shows and when the peak was, as its pprof
    /// comments do.
    pub fn report(&self, top: usize) -> String {
        let _guard = Guard::enter();
        self.render_sites(&sites(&self.resolved, self.by_allocated()), top)
    }

    /// [`render`] of `sites`, this snapshot's in the order to show; for a peak, after what it shows and when
    /// the peak was, as its pprof comments say (those after the two that every profile has: who wrote it,
    /// and the error bound that the table's header gives).
    pub(crate) fn render_sites(&self, sites: &[Site], top: usize) -> String {
        let table = render(sites, self.rate, top);
        if !matches!(self.origin, Origin::Peak { .. }) {
            return table;
        }
        let mut out: String = self
            .comments()
            .iter()
            .skip(2)
            .map(|c| format!("{c}\n"))
            .collect();
        out.push_str(&table);
        out
    }
}

/// The allocation sites of the current profile, largest in-use first: [`HeapSnapshot::current`]'s
/// [`HeapSnapshot::sites`]. See [`Site`] for how a stack is charged to a site.
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
pub fn top_sites() -> Result<Vec<Site>, Error> {
    Ok(HeapSnapshot::current()?.sites())
}

/// A text report of the `top` allocation sites of the current profile (see [`top_sites`]), with the sample
/// rate and the noise bound in its first line; for logs, and for readers without `go tool pprof`:
/// [`HeapSnapshot::current`]'s [`HeapSnapshot::report`].
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
pub fn report(top: usize) -> Result<String, Error> {
    Ok(HeapSnapshot::current()?.report(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 20), "3.00 MiB");
    }

    fn site(function: &str, space: i64, stderr: f64, samples: u64) -> Site {
        Site {
            function: function.to_string(),
            file: "src/app.rs".to_string(),
            line: 7,
            inuse_space: space,
            inuse_objects: 1,
            alloc_space: space,
            alloc_objects: 1,
            inuse_space_stderr: stderr,
            alloc_space_stderr: stderr,
            samples,
            inuse_samples: samples,
        }
    }

    #[test]
    fn sampled_figures_carry_their_error_and_few_samples_are_marked() {
        let sites = [
            site("app::many", 40 << 20, 4.5 * f64::from(1 << 20), 70),
            site("app::few", 3 << 20, 1.5 * f64::from(1 << 20), 3),
        ];
        let text = render(&sites, 512 << 10, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("estimates ± one standard error"),
            "{text}"
        );
        assert!(
            lines[2].contains("40.00 MiB ± 4.50 MiB ") && !lines[2].contains('*'),
            "{text}"
        );
        assert!(lines[3].contains("3.00 MiB ± 1.50 MiB*"), "{text}");
        // Exact mode: exact figures, no error bars.
        let exact = render(&[site("app::many", 4096, 0.0, 1)], 1, 10);
        assert!(exact.lines().next().unwrap().contains("exact"), "{exact}");
        assert!(!exact.contains('±') && !exact.contains('*'), "{exact}");
    }
}
