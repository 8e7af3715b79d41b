//! A short text report of the top allocation sites, for logs and for readers without `go tool pprof`.

use std::collections::HashMap;
use std::fmt::Write;

use crate::error::Error;
use crate::pprof::symbols::{Frame, Resolved, is_std};
use crate::sampler::Guard;
use crate::snapshot::HeapSnapshot;
use crate::table::buckets::Counts;

/// The heap figures of one allocation site: the innermost frame of a stack that is outside the standard
/// library (`std`, `core`, `alloc`), so that `Vec::push` or `sync_channel` is charged to the line that called
/// it. All values are unbiased estimates in bytes or counts.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

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

/// The allocation sites of a symbolized snapshot, largest in-use first (then largest allocated).
fn sites(resolved: &Resolved) -> Vec<Site> {
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
            Site {
                function: frame.name.to_string(),
                file: frame.file.to_string(),
                line: frame.line,
                inuse_space,
                inuse_objects,
                alloc_space,
                alloc_objects,
            }
        })
        .collect();
    sites.sort_by(|a, b| {
        (b.inuse_space, b.alloc_space, &a.function, &a.file, a.line).cmp(&(
            a.inuse_space,
            a.alloc_space,
            &b.function,
            &b.file,
            b.line,
        ))
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

/// Renders the `top` sites as a table: in-use bytes and objects, allocated bytes and objects, function and
/// `file:line`, after a header line with the sample rate and the noise bound.
pub(crate) fn render(sites: &[Site], rate: usize, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heap profile: sample rate {} ({} sites); values are estimates, relative standard error <= sqrt(rate / bytes)",
        human_bytes(i64::try_from(rate).unwrap_or(i64::MAX)),
        sites.len()
    );
    let _ = writeln!(
        out,
        "{:>12} {:>12} {:>12} {:>12}  site",
        "inuse_space", "inuse_objs", "alloc_space", "alloc_objs"
    );
    for site in sites.iter().take(top) {
        let file = site.file.rsplit('/').next().unwrap_or(&site.file);
        let _ = writeln!(
            out,
            "{:>12} {:>12} {:>12} {:>12}  {} ({}:{})",
            human_bytes(site.inuse_space),
            site.inuse_objects,
            human_bytes(site.alloc_space),
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
    /// The allocation sites of the snapshot, largest in-use first (then largest allocated). See [`Site`] for
    /// how a stack is charged to a site; the sites' values add up to the snapshot's totals.
    pub fn sites(&self) -> Vec<Site> {
        let _guard = Guard::enter();
        sites(&self.resolved)
    }

    /// A text report of the `top` allocation sites of the snapshot (see [`HeapSnapshot::sites`]), with the
    /// sample rate and the noise bound in its first line: in-use bytes and objects, allocated bytes and
    /// objects, function and `file:line` of each; for logs, and for readers without `go tool pprof`, as
    /// Go's `?debug=1` text.
    pub fn report(&self, top: usize) -> String {
        let _guard = Guard::enter();
        render(&sites(&self.resolved), self.rate, top)
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
}
