//! The messages of pprof's `profile.proto` (github.com/google/pprof, `proto/profile.proto`), derived by hand
//! for prost so that building the crate needs no `protoc`. Field numbers and types follow the `.proto` file;
//! string fields are indexes into [`Profile::string_table`], ids are 1-based and 0 means "none".
//!
//! Public so that programs and tests can decode what [`crate::dump_profile`] writes:
//!
//! ```no_run
//! use prost::Message;
//! # fn gunzip(bytes: &[u8]) -> Vec<u8> { bytes.to_vec() }
//! # let gzipped: Vec<u8> = Vec::new();
//! let profile = heap_sampler::proto::Profile::decode(gunzip(&gzipped).as_slice()).unwrap();
//! ```

/// A whole profile (`perftools.profiles.Profile`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each value of a sample means: here always `alloc_objects/count`, `alloc_space/bytes`,
    /// `inuse_objects/count`, `inuse_space/bytes`, in that order.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// One entry per distinct stack.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// The executable mappings of the process, main binary first.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// One entry per distinct return address.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// One entry per distinct function (name, mangled name, file).
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// All strings; entry 0 is always "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regular expression (string index) of frames to drop, or 0.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regular expression (string index) of frames to keep, or 0.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When the profile was taken, in nanoseconds since the Unix epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// The time span the profile covers, in nanoseconds (0 for a heap snapshot).
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What `period` counts: `space/bytes`.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The sample rate in bytes.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indexes).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The sample type shown by default (string index of its `type`): `inuse_space`.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
    /// Documentation link (string index), or 0.
    #[prost(int64, tag = "15")]
    pub doc_url: i64,
}

/// A value's type and unit, both string indexes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    /// E.g. `inuse_space`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// E.g. `bytes`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// Values recorded for one stack.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, innermost (the allocating frame) first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// String or numeric labels, e.g. `bytes` = the size of the sample's allocations.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A label on a sample: a string (`str`) or a number (`num`, with `num_unit`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// String index of the key.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String index of the value, or 0 for a numeric label.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// The value of a numeric label.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// String index of the numeric value's unit, or 0.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// An executable mapping of the process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// First address of the mapping.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// One past the last address of the mapping.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// Offset in the file that `memory_start` maps.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// String index of the file's path.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// String index of the GNU build ID, as lowercase hex.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Locations in this mapping carry function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Locations in this mapping carry file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Locations in this mapping carry line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Locations in this mapping carry inlined frames.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// A return address and the source lines it belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The mapping holding `address`, or 0.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The call instruction's address (return address − 1).
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Inlined frames first, the function that holds the code last.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Set when several frames were folded into one.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// One source line of a location.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// Id of the function.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Line number, or 0 if unknown.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// Column number, or 0 if unknown.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Unique, non-zero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// String index of the demangled name without hash suffix.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// String index of the mangled (linker) name.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// String index of the source file's path.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// First line of the function, or 0 if unknown.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}
