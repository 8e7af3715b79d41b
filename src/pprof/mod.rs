//! The pprof format: snapshots rendered as `profile.proto` ([`proto`], [`builder`]), gzipped by [`render`].

pub(crate) mod builder;
pub mod proto;
pub(crate) mod render;
#[cfg(test)]
mod tests;
