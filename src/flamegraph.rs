//! Flamegraph SVGs of the heap profile, rendered from folded stacks by inferno (Brendan Gregg's
//! `flamegraph.pl`, in Rust), with its memory palette.

use inferno::flamegraph::color::{BasicPalette, Palette};
use inferno::flamegraph::{self, Options};

use crate::error::Error;
use crate::report::human_bytes;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::HeapSnapshot;

impl HeapSnapshot {
    /// A flamegraph of the snapshot as an SVG document (interactive in a browser: click to zoom, Ctrl-F to
    /// search), titled `Heap profile: <sample_type>`: each frame's width is its share of `sample_type`, e.g.
    /// [`SampleType::InuseSpace`] for what holds memory or [`SampleType::AllocSpace`] for where allocation
    /// work goes. Rendered from [`HeapSnapshot::folded_stacks`] by inferno (Brendan Gregg's
    /// `flamegraph.pl` in Rust) with its memory palette. Needs the `flamegraph` feature (inferno, licensed
    /// CDDL-1.0).
    ///
    /// # Errors
    /// [`Error::Flamegraph`] if rendering fails.
    pub fn flamegraph_svg(&self, sample_type: SampleType) -> Result<Vec<u8>, Error> {
        self.flamegraph_titled(sample_type, &format!("Heap profile: {sample_type}"))
    }

    /// As [`HeapSnapshot::flamegraph_svg`], titled `title`.
    pub(crate) fn flamegraph_titled(
        &self,
        sample_type: SampleType,
        title: &str,
    ) -> Result<Vec<u8>, Error> {
        render(
            &self.folded_stacks(sample_type),
            sample_type,
            title,
            self.rate,
        )
    }
}

/// A flamegraph of the current heap profile as an SVG document: [`HeapSnapshot::current`] rendered by
/// [`HeapSnapshot::flamegraph_svg`], which describes it. Needs the `flamegraph` feature (inferno, licensed
/// CDDL-1.0).
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator;
/// [`Error::Flamegraph`] if rendering fails.
pub fn flamegraph_svg(sample_type: SampleType) -> Result<Vec<u8>, Error> {
    HeapSnapshot::current()?.flamegraph_svg(sample_type)
}

/// Renders folded stacks of `sample_type`, sampled at `rate` bytes, as a flamegraph titled `title`. With no
/// stacks, an SVG that says so.
fn render(
    folded: &str,
    sample_type: SampleType,
    title: &str,
    rate: usize,
) -> Result<Vec<u8>, Error> {
    let _guard = Guard::enter();
    let rate = i64::try_from(rate).unwrap_or(i64::MAX);
    let subtitle = format!(
        "sample rate {}; widths are unbiased estimates, relative standard error <= sqrt(rate / bytes)",
        human_bytes(rate)
    );
    if folded.trim().is_empty() {
        let text = format!("{title}: no sampled allocations ({subtitle})")
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" \
             xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"35\" text-anchor=\"middle\" \
             font-family=\"Verdana\" font-size=\"14\">{text}</text></svg>\n"
        )
        .into_bytes());
    }
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle);
    options.count_name = match sample_type.unit() {
        "bytes" => "bytes".to_string(),
        _ => "objects".to_string(),
    };
    options.name_type = "Function:".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours by function name: the same function has the same colour in every graph.
    options.hash = true;
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut svg).map_err(Error::Flamegraph)?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_profile_is_an_svg_that_says_so() {
        let svg = render("", SampleType::InuseSpace, "heap: inuse_space", 4096).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        assert!(
            svg.contains("heap: inuse_space: no sampled allocations"),
            "{svg}"
        );
    }
}
