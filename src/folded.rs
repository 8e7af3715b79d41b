//! Folded stacks: one line per stack, frames from the outermost to the allocating one separated by `;`, then
//! a space and the value (`main;app::load;app::parse 1048576`). The input of flamegraph tools (Brendan
//! Gregg's `flamegraph.pl`, inferno, speedscope) and of diffing scripts (`difffolded.pl`).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::error::Error;
use crate::sample_type::SampleType;
use crate::sampler::Guard;
use crate::snapshot::HeapSnapshot;
use crate::symbolize::symbols::Resolved;

impl HeapSnapshot {
    /// The snapshot as folded stacks of `sample_type` (e.g. [`SampleType::InuseSpace`] for bytes in use):
    /// one line per distinct stack with a non-zero value, sorted by stack, each
    /// `outermost;…;innermost value\n`. Frames are function names (demangled, without hash suffix), inlined
    /// functions included, as `go tool pprof` names them; a `;` inside a name (as in `[u8; 64]`) is written
    /// `:`. Values are the snapshot's unbiased estimates, in bytes or objects, as in its pprof rendering.
    /// The format is Brendan Gregg's, read by `flamegraph.pl`, inferno and speedscope.
    ///
    /// ```text
    /// main;json_index::main;json_index::parse;serde_json::de::from_str 46137344
    /// ```
    pub fn folded_stacks(&self, sample_type: SampleType) -> String {
        let _guard = Guard::enter();
        render(&self.resolved, sample_type)
    }
}

/// The current heap profile as folded stacks of `sample_type`: [`HeapSnapshot::current`] rendered by
/// [`HeapSnapshot::folded_stacks`], which describes the format.
///
/// ```text
/// main;json_index::main;json_index::parse;serde_json::de::from_str 46137344
/// ```
///
/// # Errors
/// [`Error::NotInstalled`] when no [`crate::SamplingAllocator`] is the global allocator.
pub fn folded_stacks(sample_type: SampleType) -> Result<String, Error> {
    Ok(HeapSnapshot::current()?.folded_stacks(sample_type))
}

/// Folds a symbolized snapshot (see [`HeapSnapshot::folded_stacks`]).
fn render(resolved: &Resolved, sample_type: SampleType) -> String {
    let mut stacks: BTreeMap<String, i64> = BTreeMap::new();
    for sample in &resolved.samples {
        let value = sample_type.of(&sample.counts);
        if value <= 0 {
            continue;
        }
        let mut stack = String::new();
        for &index in sample.locations.iter().rev() {
            let location = &resolved.locations[index as usize];
            let mut push = |name: &str| {
                if !stack.is_empty() {
                    stack.push(';');
                }
                stack.extend(name.chars().map(|c| if c == ';' { ':' } else { c }));
            };
            if location.frames.is_empty() {
                push(&format!("{:#x}", location.address));
            }
            for frame in location.frames.iter().rev() {
                push(&frame.name);
            }
        }
        let total = stacks.entry(stack).or_default();
        *total = total.saturating_add(value);
    }
    let mut out = String::new();
    for (stack, value) in stacks {
        let _ = writeln!(out, "{stack} {value}");
    }
    out
}
