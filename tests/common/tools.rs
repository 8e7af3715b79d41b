//! The tools the tests drive: `readelf` (binutils) on binaries, `go tool pprof` on profiles, and cargo for
//! the examples.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `readelf OPTION path` (binutils) prints.
pub fn readelf(option: &str, path: &Path) -> String {
    let out = Command::new("readelf")
        .arg(option)
        .arg(path)
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The GNU build ID of the ELF file at `path`, as `readelf -n` prints it.
pub fn readelf_build_id(path: &Path) -> String {
    let notes = readelf("-n", path);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build ID note in {}:\n{notes}", path.display()))
        .to_string()
}

/// `go`, for `go tool pprof`. `None` (the caller skips) where Go is missing, unless `CI` is set: there its
/// absence fails the test, as CI installs it.
pub fn go() -> Option<PathBuf> {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("go"));
    }
    if std::env::var_os("CI").is_some() {
        panic!("`go` not found, and CI is set: install golang-go (apt-get install -y golang-go)");
    }
    eprintln!("skipping the go tool pprof part: `go` not found (apt-get install -y golang-go)");
    None
}

/// Runs `go tool pprof ARGS`, returning stdout; panics with stderr if it fails.
pub fn pprof(go: &PathBuf, args: &[&str]) -> String {
    pprof_saving_to(go, args, &std::env::temp_dir())
}

/// As [`pprof`], with `save_dir` as `PPROF_TMPDIR`: where pprof saves a profile it fetched from a URL.
pub fn pprof_saving_to(go: &PathBuf, args: &[&str], save_dir: &Path) -> String {
    let out = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", save_dir)
        .output()
        .expect("run go tool pprof");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &stderr
}

/// The binary of example `name`: `cargo test` builds the examples next to the test binaries' `deps`
/// directory; a filtered run (`cargo test --test report`) does not, so build it then.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// What `go tool pprof -raw` printed: the sample types, and for each sample its values and its frames'
/// function names.
pub struct Raw {
    pub header: String,
    pub samples: Vec<([i64; 4], Vec<String>)>,
}

impl Raw {
    pub fn parse(text: &str) -> Raw {
        let mut lines = text.lines().peekable();
        lines
            .find(|l| l.trim() == "Samples:")
            .expect("a Samples: section");
        let header = lines.next().expect("sample types").to_string();
        let mut stacks: Vec<([i64; 4], Vec<u64>)> = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "Locations" {
                break;
            }
            // `  v1 v2 v3 v4: id id …`, then label lines such as `bytes:[65536 bytes]`.
            let Some((values, ids)) = line.split_once(": ") else {
                continue;
            };
            let values: Vec<i64> = values
                .split_whitespace()
                .map(|v| v.parse().expect("a value"))
                .collect();
            let ids = ids.split_whitespace().map(|i| i.parse().unwrap()).collect();
            stacks.push((values.try_into().expect("four values"), ids));
        }
        // `  id: 0xaddr M=1 function file:line s=…`, inlined frames on the following lines, indented.
        let mut functions: HashMap<u64, Vec<String>> = HashMap::new();
        let mut current = 0;
        for line in lines {
            if line.trim() == "Mappings" {
                break;
            }
            let trimmed = line.trim_start();
            let frame = match trimmed.split_once(": ") {
                Some((id, rest)) if id.parse::<u64>().is_ok() => {
                    current = id.parse().unwrap();
                    rest.split_whitespace().nth(2)
                }
                _ => trimmed.split_whitespace().next(),
            };
            if let Some(name) = frame {
                functions.entry(current).or_default().push(name.to_string());
            }
        }
        let samples = stacks
            .into_iter()
            .map(|(values, ids)| {
                let names = ids
                    .iter()
                    .flat_map(|id| functions.get(id).cloned().unwrap_or_default())
                    .collect();
                (values, names)
            })
            .collect();
        Raw { header, samples }
    }

    /// Values summed over the samples whose stack passes through `function`.
    pub fn at(&self, function: &str) -> [i64; 4] {
        let suffix = format!("::{function}");
        self.samples
            .iter()
            .filter(|(_, names)| names.iter().any(|n| n.ends_with(&suffix)))
            .fold([0; 4], |mut acc, (values, _)| {
                (0..4).for_each(|i| acc[i] += values[i]);
                acc
            })
    }
}
