//! The process's executable mappings and their GNU build IDs, for the profile's `Mapping` entries.

use std::collections::HashMap;
use std::fs::File;

use object::Object;

use crate::lock::Lock;

/// One executable mapping of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MappingInfo {
    pub(crate) start: u64,
    pub(crate) limit: u64,
    pub(crate) file_offset: u64,
    pub(crate) path: String,
    /// Lowercase hex of the `.note.gnu.build-id`, or "" when the file has none or cannot be read.
    pub(crate) build_id: String,
}

/// Build IDs by path, read once per file. Only locked under the dump lock.
static BUILD_IDS: Lock<Option<HashMap<String, String>>> = Lock::new(None);

const DELETED: &str = " (deleted)";

/// Reads `/proc/self/maps`: the executable, file-backed mappings, the main binary's first. Empty where the
/// file does not exist (not Linux); locations then carry no mapping.
pub(crate) fn read() -> Vec<MappingInfo> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().trim_end_matches(DELETED).to_string())
        .unwrap_or_default();
    let mut mappings: Vec<MappingInfo> = maps.lines().filter_map(parse_line).collect();
    // Stable partition: main binary first, the rest in address order.
    mappings.sort_by_key(|m| m.path != exe);
    let mut ids = BUILD_IDS.lock();
    let ids = ids.get_or_insert_with(HashMap::new);
    for mapping in &mut mappings {
        let source = if mapping.path == exe {
            "/proc/self/exe"
        } else {
            mapping.path.as_str()
        };
        mapping.build_id = ids
            .entry(mapping.path.clone())
            .or_insert_with(|| build_id(source))
            .clone();
    }
    mappings
}

/// Parses one line of `/proc/self/maps` (`start-end perms offset dev inode path`), keeping executable,
/// file-backed mappings.
fn parse_line(line: &str) -> Option<MappingInfo> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.nth(2)?.trim_start();
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, limit) = range.split_once('-')?;
    Some(MappingInfo {
        start: u64::from_str_radix(start, 16).ok()?,
        limit: u64::from_str_radix(limit, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.trim_end_matches(DELETED).to_string(),
        build_id: String::new(),
    })
}

/// The GNU build ID of the ELF file at `path`, as lowercase hex; "" if there is none or it cannot be read.
fn build_id(path: &str) -> String {
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    let cache = object::ReadCache::new(file);
    match object::File::parse(&cache)
        .ok()
        .and_then(|elf| elf.build_id().ok().flatten())
    {
        Some(id) => id.iter().map(|b| format!("{b:02x}")).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let line = "55d0c0a00000-55d0c0b00000 r-xp 00001000 fd:01 1234    /usr/bin/app (deleted)";
        let m = parse_line(line).unwrap();
        assert_eq!(
            (m.start, m.limit, m.file_offset),
            (0x55d0c0a00000, 0x55d0c0b00000, 0x1000)
        );
        assert_eq!(m.path, "/usr/bin/app");
        assert!(parse_line("7ffd-7ffe rw-p 00000000 00:00 0    [stack]").is_none());
        assert!(parse_line("7ffd-7ffe r-xp 00000000 00:00 0    [vdso]").is_none());
    }

    #[test]
    fn main_binary_comes_first_with_a_build_id() {
        let mappings = read();
        assert!(!mappings.is_empty());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(mappings[0].path, exe.to_string_lossy());
    }
}
