//! Parsing the environment: what [`crate::env`]'s variables ask for, each invalid value reported once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::env::{DUMP_AT_EXIT, DUMP_DIR, DUMP_INTERVAL, DUMP_KEEP, RATE, SYMBOLIZE};
use crate::report::human_bytes;
use crate::sampler::DEFAULT_SAMPLE_RATE;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_KEEP: usize = 10;

/// What the environment asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Config {
    pub(super) rate: Option<usize>,
    pub(super) symbolize: Option<bool>,
    pub(super) exit_dump: Option<PathBuf>,
    pub(super) periodic: Option<Periodic>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Periodic {
    pub(super) dir: PathBuf,
    pub(super) interval: Duration,
    pub(super) keep: usize,
}

impl Config {
    /// Reads the variables through `lookup`; an empty variable counts as unset. Each invalid value is
    /// reported once through `warn`, with the variable's name and the default used instead.
    pub(super) fn parse(
        lookup: impl Fn(&str) -> Option<OsString>,
        mut warn: impl FnMut(String),
    ) -> Config {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut config = Config::default();
        if let Some(value) = get(RATE) {
            match value.to_str().and_then(parse_rate) {
                Some(rate) => config.rate = Some(rate),
                None => warn(format!(
                    "ignoring {RATE}={value:?}: not a size in bytes (e.g. 524288, 512KiB, 4MiB; 0 turns \
                     sampling off); using the program's sample rate, by default {}",
                    human_bytes(DEFAULT_SAMPLE_RATE as i64)
                )),
            }
        }
        if let Some(value) = get(SYMBOLIZE) {
            match value.to_str().map(str::trim) {
                Some("0" | "false" | "no" | "off") => config.symbolize = Some(false),
                Some("1" | "true" | "yes" | "on") => config.symbolize = Some(true),
                _ => warn(format!(
                    "ignoring {SYMBOLIZE}={value:?}: not 0 or 1 (0 leaves symbolization to the collector); \
                     symbolizing in process"
                )),
            }
        }
        config.exit_dump = get(DUMP_AT_EXIT).map(PathBuf::from);
        let interval = get(DUMP_INTERVAL).map(|value| {
            value.to_str().and_then(parse_interval).unwrap_or_else(|| {
                warn(format!(
                    "ignoring {DUMP_INTERVAL}={value:?}: not a duration (e.g. 60, 30s, 5m, 1h); using the \
                     default, {}",
                    humantime::format_duration(DEFAULT_INTERVAL)
                ));
                DEFAULT_INTERVAL
            })
        });
        let keep = get(DUMP_KEEP).map(|value| {
            value
                .to_str()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&keep| keep > 0)
                .unwrap_or_else(|| {
                    warn(format!(
                        "ignoring {DUMP_KEEP}={value:?}: not a positive whole number of files; using the \
                         default, {DEFAULT_KEEP}"
                    ));
                    DEFAULT_KEEP
                })
        });
        match get(DUMP_DIR) {
            Some(dir) => {
                config.periodic = Some(Periodic {
                    dir: PathBuf::from(dir),
                    interval: interval.unwrap_or(DEFAULT_INTERVAL),
                    keep: keep.unwrap_or(DEFAULT_KEEP),
                });
            }
            None if interval.is_some() || keep.is_some() => warn(format!(
                "ignoring {DUMP_INTERVAL} and {DUMP_KEEP}: periodic profiles need {DUMP_DIR}, a directory \
                 to write them to"
            )),
            None => {}
        }
        config
    }
}

/// A sample rate: bytes, with an optional binary suffix (`524288`, `512KiB`, `512K`, `4 MiB`, `1.5M`); `K`,
/// `KB` and `KiB` all mean 1024.
fn parse_rate(value: &str) -> Option<usize> {
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(value.trim())
        .ok()?;
    usize::try_from(bytes).ok()
}

/// An interval: whole seconds (`60`), or a duration with units (`30s`, `5m`, `1h 30m`, `500ms`); not zero.
fn parse_interval(value: &str) -> Option<Duration> {
    let value = value.trim();
    let interval = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value).ok()?,
    };
    (!interval.is_zero()).then_some(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> (Config, Vec<String>) {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let mut warnings = Vec::new();
        let config = Config::parse(|name| vars.get(name).cloned(), |w| warnings.push(w));
        (config, warnings)
    }

    #[test]
    fn sizes_and_intervals_accept_units() {
        assert_eq!(parse_rate("524288"), Some(524_288));
        assert_eq!(parse_rate("512KiB"), Some(524_288));
        assert_eq!(parse_rate("512 KiB"), Some(524_288));
        assert_eq!(parse_rate("512k"), Some(524_288));
        assert_eq!(parse_rate("512KB"), Some(524_288));
        assert_eq!(parse_rate("4MiB"), Some(4 << 20));
        assert_eq!(parse_rate("0"), Some(0));
        assert_eq!(parse_rate("1"), Some(1));
        assert_eq!(parse_rate("lots"), None);
        assert_eq!(parse_rate("-1"), None);
        assert_eq!(parse_interval("60"), Some(Duration::from_secs(60)));
        assert_eq!(parse_interval("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval("0"), None);
        assert_eq!(parse_interval("soon"), None);
    }

    #[test]
    fn a_full_configuration_parses_without_warnings() {
        let (config, warnings) = parse(&[
            (RATE, "64KiB"),
            (DUMP_AT_EXIT, "/tmp/heap.pb.gz"),
            (DUMP_DIR, "/var/tmp/heap"),
            (DUMP_INTERVAL, "5m"),
            (DUMP_KEEP, "3"),
            (SYMBOLIZE, "0"),
        ]);
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            config,
            Config {
                rate: Some(65_536),
                symbolize: Some(false),
                exit_dump: Some(PathBuf::from("/tmp/heap.pb.gz")),
                periodic: Some(Periodic {
                    dir: PathBuf::from("/var/tmp/heap"),
                    interval: Duration::from_secs(300),
                    keep: 3,
                }),
            }
        );
        assert_eq!(parse(&[]).0, Config::default());
        assert_eq!(
            parse(&[(RATE, ""), (DUMP_AT_EXIT, "")]),
            (Config::default(), vec![])
        );
    }

    #[test]
    fn garbage_is_reported_once_per_variable_with_the_default_used() {
        let (config, warnings) = parse(&[
            (RATE, "lots"),
            (DUMP_DIR, "/var/tmp/heap"),
            (DUMP_INTERVAL, "soon"),
            (DUMP_KEEP, "0"),
        ]);
        assert_eq!(config.rate, None);
        assert_eq!(
            config.periodic,
            Some(Periodic {
                dir: PathBuf::from("/var/tmp/heap"),
                interval: DEFAULT_INTERVAL,
                keep: DEFAULT_KEEP,
            })
        );
        assert_eq!(
            warnings,
            [
                "ignoring HEAP_SAMPLER_RATE=\"lots\": not a size in bytes (e.g. 524288, 512KiB, 4MiB; 0 turns \
                 sampling off); using the program's sample rate, by default 512.00 KiB",
                "ignoring HEAP_SAMPLER_DUMP_INTERVAL=\"soon\": not a duration (e.g. 60, 30s, 5m, 1h); using \
                 the default, 1m",
                "ignoring HEAP_SAMPLER_DUMP_KEEP=\"0\": not a positive whole number of files; using the \
                 default, 10",
            ]
        );
        let (config, warnings) = parse(&[(DUMP_KEEP, "3")]);
        assert_eq!(config, Config::default());
        assert_eq!(
            warnings,
            [
                "ignoring HEAP_SAMPLER_DUMP_INTERVAL and HEAP_SAMPLER_DUMP_KEEP: periodic profiles need \
              HEAP_SAMPLER_DUMP_DIR, a directory to write them to"
            ]
        );
    }
}
