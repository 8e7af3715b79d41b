//! The four sample types of a heap profile, by their pprof names.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::table::buckets::Counts;

/// One of the four values every sample of a heap profile carries, named as in pprof and Go's heap profiles
/// (`go tool pprof -sample_index=alloc_space`). Chooses what folded stacks and flamegraphs add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// Objects allocated since the program started (count).
    AllocObjects,
    /// Bytes allocated since the program started: where the allocator's work goes, freed or not.
    AllocSpace,
    /// Objects allocated and not yet freed (count).
    InuseObjects,
    /// Bytes allocated and not yet freed: what holds memory now. The default of heap profiles.
    InuseSpace,
}

impl SampleType {
    /// All four, in the order of a sample's values.
    pub const ALL: [SampleType; 4] = [
        SampleType::AllocObjects,
        SampleType::AllocSpace,
        SampleType::InuseObjects,
        SampleType::InuseSpace,
    ];

    /// The pprof name: `alloc_objects`, `alloc_space`, `inuse_objects` or `inuse_space`.
    pub const fn name(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
        }
    }

    /// The pprof unit: `count` or `bytes`.
    pub const fn unit(self) -> &'static str {
        match self {
            SampleType::AllocObjects | SampleType::InuseObjects => "count",
            SampleType::AllocSpace | SampleType::InuseSpace => "bytes",
        }
    }

    /// The position of this type in a sample's values.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// This type's value in `counts`, in whole objects or bytes.
    pub(crate) fn of(self, counts: &Counts) -> i64 {
        counts.values()[self.index()]
    }
}

impl fmt::Display for SampleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SampleType {
    type Err = Error;

    /// Parses a pprof name (`inuse_space`, …).
    ///
    /// # Errors
    /// [`Error::UnknownSampleType`] for any other string.
    fn from_str(name: &str) -> Result<SampleType, Error> {
        SampleType::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::UnknownSampleType(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_value_order() {
        for (i, t) in SampleType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(t.name().parse::<SampleType>().unwrap(), t);
            assert_eq!(crate::pprof::builder::SAMPLE_TYPES[i], (t.name(), t.unit()));
        }
        assert!("space".parse::<SampleType>().is_err());
    }
}
