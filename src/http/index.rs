//! The `/debug/pprof/` page: the in-use bytes over the last minutes as a chart, the top sites with their
//! error bars, and links to every profile and view.
//!
//! One self-contained document: inline CSS and SVG, no scripts, fonts or other files. It is well-formed XML
//! as well as HTML (polyglot markup: XHTML's namespace, closed empty elements, only XML's entities), so that
//! a parser can check it, and every text that comes from the program (function names, files, errors) is
//! escaped.

use std::borrow::Cow;
use std::fmt::Write;
use std::time::Duration;

use crate::error::Error;
use crate::history::{self, Reading};
use crate::report::{FEW_SAMPLES, Site, few_samples, human_bytes};
use crate::stats::Stats;

/// The sites in the table.
const TOP: usize = 10;

/// The chart's size in SVG units (it is scaled to the page's width), and its plot area's margins: room for
/// the byte labels on the left and the time labels below.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 16.0;
const TOP_MARGIN: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// An error bar's size: as wide as the largest site's figure plus its standard error.
const BAR_WIDTH: f64 = 140.0;
const BAR_HEIGHT: f64 = 14.0;

/// The page for the process now: its readings, its [`crate::stats()`], and the sites of `profile` (the heap
/// now, largest in use first) or the error that kept it from being taken.
/// `path` is the page's own path, as the client asked for it (`/debug/pprof/`, or under the prefix the
/// endpoints are mounted at), shown in its title and its commands.
pub(super) fn page_now(profile: Result<(Vec<Site>, usize), Error>, path: &str) -> String {
    let profile = match &profile {
        Ok((sites, rate)) => Ok((sites.as_slice(), *rate)),
        Err(error) => Err(error),
    };
    page(
        &history::readings(),
        history::interval(),
        &crate::stats(),
        profile,
        path,
    )
}

/// The page for `readings` (oldest first, taken every `interval`), the figures `stats`, and the sites of
/// the heap (largest in use first) with the sample rate they were taken at, or the error that kept the
/// profile from being taken, at `path`.
fn page(
    readings: &[Reading],
    interval: Option<Duration>,
    stats: &Stats,
    profile: Result<(&[Site], usize), &Error>,
    path: &str,
) -> String {
    let path = escape(path);
    let mut html = String::with_capacity(16 << 10);
    // The documents are written for the default path; the page shows the one it was asked for.
    html.push_str(&HEAD.replace(DEFAULT_PATH, &path));
    let _ = writeln!(
        html,
        "<h1>heap-sampler <span class=\"dim\">{} · {path}</span></h1>",
        env!("CARGO_PKG_VERSION")
    );
    let rate = stats.sample_rate;
    let _ = writeln!(
        html,
        "<p class=\"figures\"><span>in use now <b>{}</b></span> <span>peak since start <b>{}</b></span> \
         <span>allocated since start <b>{}</b></span> <span>sample rate <b>{}</b>{}</span></p>",
        human_bytes(saturating_i64(stats.inuse_bytes)),
        human_bytes(saturating_i64(stats.peak_inuse_bytes)),
        human_bytes(saturating_i64(stats.alloc_bytes)),
        human_bytes(i64::try_from(rate).unwrap_or(i64::MAX)),
        if rate <= 1 {
            " (exact: every allocation recorded)"
        } else {
            ""
        },
    );

    html.push_str("<h2>Bytes in use</h2>\n");
    chart(&mut html, readings, interval);

    html.push_str("<h2>Top sites by bytes in use</h2>\n");
    match profile {
        Ok((sites, rate)) => sites_table(&mut html, sites, rate),
        Err(error) => {
            let _ = writeln!(
                html,
                "<p class=\"none\">No profile: {}</p>",
                escape(&error.to_string())
            );
        }
    }

    html.push_str(&PROFILES.replace(DEFAULT_PATH, &path));
    html.push_str("</body>\n</html>\n");
    html
}

/// The page's path where the endpoints are mounted as Go mounts them.
const DEFAULT_PATH: &str = "/debug/pprof/";

/// The document up to its body's content: the polyglot prologue and the style sheet.
const HEAD: &str = r#"<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>/debug/pprof/ · heap-sampler</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2430;
  max-width: 1100px; margin: 20px auto; padding: 0 16px; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 26px 0 6px; }
.dim, .file, .err, .note { color: #5f6673; }
h1 .dim { font-weight: normal; }
.figures span { margin-right: 22px; white-space: nowrap; }
.note, .none { margin: 0 0 8px; }
.none { font-style: italic; }
table { border-collapse: collapse; }
th, td { padding: 3px 10px; text-align: left; vertical-align: middle; }
th { font-weight: 600; border-bottom: 1px solid #cfd4dc; white-space: nowrap; }
tbody tr:nth-child(odd) { background: #f5f6f8; }
.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, pre, .fn { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.fn { overflow-wrap: break-word; }
.file { font-size: 12px; }
svg.chart { display: block; width: 100%; max-width: 900px; height: auto; }
svg text { font: 11px system-ui, sans-serif; fill: #5f6673; }
.grid { stroke: #e3e6eb; }
.axis { stroke: #9aa1ad; }
.inuse { fill: none; stroke: #2563eb; stroke-width: 2; stroke-linejoin: round; }
.area { fill: #2563eb; fill-opacity: 0.1; }
.highest { fill: #b91c1c; }
.bar { fill: #93c5fd; }
.whisker { stroke: #1e3a8a; stroke-width: 1.2; }
pre { background: #f5f6f8; padding: 10px 12px; border-radius: 4px; overflow-x: auto; }
</style>
</head>
<body>
"#;

/// The line chart of the readings, taken every `interval`, or why there is none.
fn chart(html: &mut String, readings: &[Reading], interval: Option<Duration>) {
    let every = match interval {
        Some(interval) => format!(" every {} s", interval.as_secs()),
        None => String::new(),
    };
    if readings.len() < 2 {
        let _ = writeln!(
            html,
            "<p class=\"none\">No chart: fewer than two readings of the bytes in use yet. heap-sampler's \
             server and its axum router take one{every} while they run.</p>"
        );
        return;
    }
    let oldest = readings.iter().map(|r| r.age).max().unwrap_or_default();
    // At least a second, so that readings of one instant still span the plot.
    let span = oldest.as_secs_f64().max(1.0);
    let highest = readings
        .iter()
        .max_by_key(|r| r.inuse_bytes)
        .copied()
        .unwrap_or(readings[0]);
    let (byte_step, byte_ticks) = byte_ticks(highest.inuse_bytes);
    let top = byte_step as f64 * byte_ticks as f64;
    let (right, bottom) = (WIDTH - RIGHT, HEIGHT - BOTTOM);
    let x = |age: Duration| right - age.as_secs_f64() / span * (right - LEFT);
    let y = |bytes: u64| bottom - bytes as f64 / top * (bottom - TOP_MARGIN);

    let newest = readings
        .iter()
        .min_by_key(|r| r.age)
        .unwrap_or(&readings[0]);
    let _ = writeln!(
        html,
        "<p class=\"note\">{} readings, taken{every}: latest {}, highest shown {} ({}).</p>",
        readings.len(),
        human_bytes(saturating_i64(newest.inuse_bytes)),
        human_bytes(saturating_i64(highest.inuse_bytes)),
        age_label(highest.age.as_secs()),
    );
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"bytes in use over the last {}\">",
        age_label(oldest.as_secs()).trim_start_matches('−')
    );
    for i in 0..=byte_ticks {
        let bytes = byte_step * i;
        let at = y(bytes);
        let _ = writeln!(
            html,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\"/>\
             <text class=\"y\" x=\"{:.1}\" y=\"{at:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>",
            LEFT - 6.0,
            human_bytes(saturating_i64(bytes))
        );
    }
    let step = time_step(span);
    let mut age = 0;
    while age as f64 <= span {
        let at = x(Duration::from_secs(age));
        let _ = writeln!(
            html,
            "<line class=\"grid\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{TOP_MARGIN}\" y2=\"{bottom}\"/>\
             <text class=\"x\" x=\"{at:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            HEIGHT - 8.0,
            age_label(age)
        );
        age += step;
    }
    let _ = writeln!(
        html,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{right}\" y1=\"{bottom}\" y2=\"{bottom}\"/>"
    );
    let mut points = String::with_capacity(readings.len() * 14);
    for reading in readings {
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x(reading.age),
            y(reading.inuse_bytes)
        );
    }
    let points = points.trim_end();
    let first = x(readings[0].age);
    let last = x(readings[readings.len() - 1].age);
    let _ = writeln!(
        html,
        "<polygon class=\"area\" points=\"{first:.1},{bottom} {points} {last:.1},{bottom}\"/>\n\
         <polyline class=\"inuse\" points=\"{points}\"/>\n\
         <circle class=\"highest\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"><title>highest shown: {}</title></circle>\n\
         </svg>",
        x(highest.age),
        y(highest.inuse_bytes),
        human_bytes(saturating_i64(highest.inuse_bytes))
    );
}

/// The byte axis for readings up to `highest`: the step between gridlines and their count above zero, so
/// that the top gridline is at or above `highest`, with at most five. A step is a round number of the binary
/// unit `highest` is shown in (a quarter, a half, 1, 2, 2.5, 5, 10, ...; whole bytes below a KiB), so that
/// its labels are short.
fn byte_ticks(highest: u64) -> (u64, u64) {
    /// Steps in quarters of the unit.
    const QUARTERS: [u64; 15] = [
        1, 2, 4, 8, 10, 20, 40, 80, 100, 200, 400, 800, 1000, 2000, 4000,
    ];
    let mut unit: u64 = 1;
    while highest / unit >= 1024 && unit < 1 << 50 {
        unit <<= 10;
    }
    let quarters = QUARTERS
        .into_iter()
        .filter(|q| unit > 1 || q.is_multiple_of(4))
        .find(|&q| highest as f64 / (unit as f64 * q as f64 / 4.0) <= 5.0)
        .unwrap_or(4000);
    let step = unit * quarters / 4;
    (step, highest.div_ceil(step).max(1))
}

/// The step between time gridlines, in seconds: the first round step that gives at most six over `span`
/// seconds.
fn time_step(span: f64) -> u64 {
    const STEPS: [u64; 18] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    ];
    STEPS
        .into_iter()
        .find(|&step| span / step as f64 <= 6.0)
        .unwrap_or(86400 * ((span / 86400.0 / 6.0).ceil() as u64).max(1))
}

/// A time `secs` seconds ago, as an axis label: `now`, `−30 s`, `−5 min`, `−1 h 30 min`.
fn age_label(secs: u64) -> String {
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (hours, minutes, seconds) {
        (0, 0, 0) => "now".to_string(),
        (0, 0, s) => format!("−{s} s"),
        (0, m, 0) => format!("−{m} min"),
        (0, m, s) => format!("−{m} min {s} s"),
        (h, 0, _) => format!("−{h} h"),
        (h, m, _) => format!("−{h} h {m} min"),
    }
}

/// The table of the top sites, with their error bars, and what the marks mean.
fn sites_table(html: &mut String, sites: &[Site], rate: usize) {
    let exact = rate <= 1;
    if exact {
        html.push_str(
            "<p class=\"note\">Exact figures: every allocation is recorded (sample rate 1).</p>\n",
        );
    } else {
        let _ = writeln!(
            html,
            "<p class=\"note\">Estimates from sampled allocations, each ± one standard error (the bar's \
             whiskers); * fewer than {FEW_SAMPLES} samples behind the figure, so that both are rough.</p>"
        );
    }
    if sites.is_empty() {
        html.push_str("<p class=\"none\">No allocation sampled yet.</p>\n");
        return;
    }
    let shown = &sites[..sites.len().min(TOP)];
    let widest = shown
        .iter()
        .map(|s| s.inuse_space.max(0) as f64 + if exact { 0.0 } else { s.inuse_space_stderr })
        .fold(0.0, f64::max);
    html.push_str(
        "<table class=\"sites\">\n<thead><tr><th class=\"n\">in use</th><th></th>\
         <th class=\"n\">in-use objects</th><th class=\"n\">allocated</th>\
         <th class=\"n\">allocated objects</th><th>site</th></tr></thead>\n<tbody>\n",
    );
    for site in shown {
        let inuse = space(
            site.inuse_space,
            site.inuse_space_stderr,
            site.inuse_samples,
            exact,
        );
        let allocated = space(
            site.alloc_space,
            site.alloc_space_stderr,
            site.samples,
            exact,
        );
        let file = site.file.rsplit('/').next().unwrap_or(&site.file);
        let _ = writeln!(
            html,
            "<tr><td class=\"n\">{inuse}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{allocated}</td>\
             <td class=\"n\">{}</td><td><span class=\"fn\">{}</span><br/>\
             <span class=\"file\" title=\"{}\">{}:{}</span></td></tr>",
            error_bar(site, widest, exact),
            grouped(site.inuse_objects),
            grouped(site.alloc_objects),
            // A long name wraps after a path separator rather than inside a word.
            escape(&site.function).replace("::", "::<wbr/>"),
            escape(&site.file),
            escape(file),
            site.line,
        );
    }
    html.push_str("</tbody>\n</table>\n");
    if sites.len() > TOP {
        let _ = writeln!(
            html,
            "<p class=\"note\">… {} more sites: <a href=\"heap?debug=1\">all of them as text</a>.</p>",
            sites.len() - TOP
        );
    }
}

/// A space figure: `40.00 MiB`, then `± 4.50 MiB` unless `exact` (or nothing is held and nothing is
/// uncertain), and a `*` when it rests on few samples.
fn space(bytes: i64, stderr: f64, samples: u64, exact: bool) -> String {
    if exact || (bytes == 0 && stderr == 0.0) {
        return human_bytes(bytes);
    }
    format!(
        "{} <span class=\"err\">± {}{}</span>",
        human_bytes(bytes),
        human_bytes(stderr.round() as i64),
        if few_samples(bytes, samples) { "*" } else { "" }
    )
}

/// A site's in-use bytes as a bar, on the scale where `widest` bytes fill it, with whiskers one standard
/// error either side unless `exact`.
fn error_bar(site: &Site, widest: f64, exact: bool) -> String {
    let scale = if widest > 0.0 {
        (BAR_WIDTH - 2.0) / widest
    } else {
        0.0
    };
    let value = site.inuse_space.max(0) as f64;
    let mid = BAR_HEIGHT / 2.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"bar\" width=\"{BAR_WIDTH}\" height=\"{BAR_HEIGHT}\" \
         viewBox=\"0 0 {BAR_WIDTH} {BAR_HEIGHT}\"><rect class=\"bar\" x=\"0\" y=\"3\" width=\"{:.1}\" \
         height=\"{:.1}\"/>",
        value * scale,
        BAR_HEIGHT - 6.0
    );
    if !exact && site.inuse_space_stderr > 0.0 {
        let low = (value - site.inuse_space_stderr).max(0.0) * scale;
        let high = (value + site.inuse_space_stderr) * scale;
        let _ = write!(
            svg,
            "<path class=\"whisker\" d=\"M{low:.1} {mid}H{high:.1}M{low:.1} 2V{end}M{high:.1} 2V{end}\"/>",
            end = BAR_HEIGHT - 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The profiles and their views, and how to read them with `go tool pprof`.
const PROFILES: &str = r#"<h2>Profiles</h2>
<table class="profiles">
<thead><tr><th>profile</th><th>views</th><th>what it answers</th></tr></thead>
<tbody>
<tr><td><a href="heap?format=svg">heap flamegraph</a></td><td><a href="heap?debug=1">top</a> · <a href="heap?format=folded">folded</a> · <a href="heap">pprof</a></td><td>what holds memory now: allocations not yet freed (inuse_space)</td></tr>
<tr><td><a href="allocs?format=svg">allocs flamegraph</a></td><td><a href="allocs?debug=1">top</a> · <a href="allocs?format=folded">folded</a> · <a href="allocs">pprof</a></td><td>where allocation work goes: every allocation since start, freed or not (alloc_space)</td></tr>
<tr><td><a href="peak?format=svg">peak flamegraph</a></td><td><a href="peak?debug=1">top</a> · <a href="peak?format=folded">folded</a> · <a href="peak">pprof</a></td><td>what held memory at the highest in-use bytes so far (inuse_space at the peak)</td></tr>
</tbody>
</table>
<p>Read them with <code>go tool pprof</code>; add <code>?seconds=30</code> to <code>allocs</code> for the next 30 seconds only:</p>
<pre>go tool pprof http://HOST/debug/pprof/heap                 # what holds memory now
go tool pprof 'http://HOST/debug/pprof/allocs?seconds=30'  # allocations during the next 30 s
go tool pprof -http=: http://HOST/debug/pprof/heap         # pprof's web interface
curl 'http://HOST/debug/pprof/heap?debug=1'                # top sites as text</pre>
"#;

/// A count with its thousands separated: `1,034,179`.
fn grouped(count: i64) -> String {
    let digits = count.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if count < 0 {
        out.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `value` as the `i64` that [`human_bytes`] takes.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `text` escaped for HTML and XML text and attribute values; characters XML cannot carry (controls other
/// than tab and line ends) become U+FFFD.
fn escape(text: &str) -> Cow<'_, str> {
    let special = |c: char| matches!(c, '&' | '<' | '>' | '"' | '\'') || is_xml_control(c);
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if is_xml_control(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A character that XML 1.0 does not allow in a document, even as a reference.
fn is_xml_control(c: char) -> bool {
    (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn parse(html: &str) -> roxmltree::Document<'_> {
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(html, options)
            .unwrap_or_else(|e| panic!("not well-formed: {e}\n{html}"))
    }

    fn with_class<'a, 'i>(
        doc: &'a roxmltree::Document<'i>,
        tag: &str,
        class: &str,
    ) -> Vec<roxmltree::Node<'a, 'i>> {
        doc.descendants()
            .filter(|n| n.has_tag_name(tag) && n.attribute("class") == Some(class))
            .collect()
    }

    /// All the text under `node`, as a reader sees it.
    fn text(node: roxmltree::Node<'_, '_>) -> String {
        node.descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect()
    }

    fn number(node: roxmltree::Node<'_, '_>, attribute: &str) -> f64 {
        node.attribute(attribute).unwrap().parse().unwrap()
    }

    fn exact_page(readings: &[Reading], sites: &[Site], rate: usize) -> String {
        page(
            readings,
            Some(Duration::from_secs(5)),
            &crate::stats(),
            Ok((sites, rate)),
            DEFAULT_PATH,
        )
    }

    /// The straight line through two points, as a function.
    fn line(a: (f64, f64), b: (f64, f64)) -> impl Fn(f64) -> f64 {
        move |v| a.1 + (v - a.0) / (b.0 - a.0) * (b.1 - a.1)
    }

    #[test]
    fn the_chart_draws_the_readings_on_its_labelled_axes() {
        // Five minutes of readings every 5 s, oldest first, rising to 83 MiB and falling back.
        let readings: Vec<Reading> = (0..=60u64)
            .map(|i| Reading {
                age: Duration::from_secs(300 - 5 * i),
                inuse_bytes: 83 * MIB * (30 - i.abs_diff(30)) / 30 + i * 1000,
            })
            .collect();
        let html = exact_page(&readings, &[], 512 << 10);
        let doc = parse(&html);
        let svg = with_class(&doc, "svg", "chart");
        assert_eq!(svg.len(), 1, "{html}");
        assert_eq!(
            svg[0].tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );

        // The byte axis: round steps of 20 MiB up to the first above the highest reading.
        let y_labels: Vec<(String, f64)> = with_class(&doc, "text", "y")
            .into_iter()
            .map(|t| (text(t), number(t, "y")))
            .collect();
        let names: Vec<&str> = y_labels.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            [
                "0 B",
                "20.00 MiB",
                "40.00 MiB",
                "60.00 MiB",
                "80.00 MiB",
                "100.00 MiB"
            ]
        );
        let y = line((0.0, y_labels[0].1), ((100 * MIB) as f64, y_labels[5].1));
        for (i, (_, at)) in y_labels.iter().enumerate() {
            assert!(
                (y((i as u64 * 20 * MIB) as f64) - at).abs() < 0.15,
                "{y_labels:?}"
            );
        }
        // The time axis: a label a minute, from now back to the oldest reading.
        let x_labels: Vec<(String, f64)> = with_class(&doc, "text", "x")
            .into_iter()
            .map(|t| (text(t), number(t, "x")))
            .collect();
        let names: Vec<&str> = x_labels.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            ["now", "−1 min", "−2 min", "−3 min", "−4 min", "−5 min"]
        );
        let x = line((0.0, x_labels[0].1), (300.0, x_labels[5].1));
        for (i, (_, at)) in x_labels.iter().enumerate() {
            assert!((x(60.0 * i as f64) - at).abs() < 0.15, "{x_labels:?}");
        }

        // Every reading is a point of the line, where the axes put it (to the 0.1 unit the points are
        // written with, and the labels' own rounding).
        let polyline = with_class(&doc, "polyline", "inuse");
        let points: Vec<(f64, f64)> = polyline[0]
            .attribute("points")
            .unwrap()
            .split(' ')
            .map(|p| {
                let (px, py) = p.split_once(',').unwrap();
                (px.parse().unwrap(), py.parse().unwrap())
            })
            .collect();
        assert_eq!(points.len(), readings.len());
        for (reading, (px, py)) in readings.iter().zip(&points) {
            let (ex, ey) = (x(reading.age.as_secs_f64()), y(reading.inuse_bytes as f64));
            assert!(
                (px - ex).abs() < 0.2 && (py - ey).abs() < 0.2,
                "{reading:?} at ({px}, {py}), expected ({ex:.2}, {ey:.2})"
            );
        }
        // The highest reading is marked and named, as is the latest.
        let highest = readings[30];
        let dot = with_class(&doc, "circle", "highest")[0];
        assert!((number(dot, "cy") - y(highest.inuse_bytes as f64)).abs() < 0.2);
        assert!((number(dot, "cx") - x(highest.age.as_secs_f64())).abs() < 0.2);
        let note = text(
            doc.descendants()
                .find(|n| n.has_tag_name("p") && text(*n).contains("readings, taken"))
                .unwrap(),
        );
        assert_eq!(
            note,
            format!(
                "61 readings, taken every 5 s: latest {}, highest shown {} (−2 min 30 s).",
                human_bytes(60_000),
                human_bytes((83 * MIB + 30_000) as i64)
            )
        );
    }

    #[test]
    fn fewer_than_two_readings_make_no_chart() {
        let one = [Reading {
            age: Duration::ZERO,
            inuse_bytes: 4096,
        }];
        for readings in [&[][..], &one[..]] {
            let html = exact_page(readings, &[], 512 << 10);
            let doc = parse(&html);
            assert!(with_class(&doc, "svg", "chart").is_empty(), "{html}");
            assert!(
                html.contains(
                    "No chart: fewer than two readings of the bytes in use yet. heap-sampler's server \
                     and its axum router take one every 5 s while they run."
                ),
                "{html}"
            );
        }
        // Readings of one instant still make a chart, over a second.
        let same = [one[0], one[0]];
        let doc_text = exact_page(&same, &[], 512 << 10);
        let doc = parse(&doc_text);
        let x: Vec<String> = with_class(&doc, "text", "x")
            .into_iter()
            .map(text)
            .collect();
        assert_eq!(x, ["now", "−1 s"]);
    }

    fn site(function: &str, file: &str, mib: i64, stderr_mib: f64, samples: u64) -> Site {
        Site {
            function: function.to_string(),
            file: file.to_string(),
            line: 7,
            inuse_space: mib << 20,
            inuse_objects: samples as i64,
            alloc_space: (2 * mib) << 20,
            alloc_objects: 2 * samples as i64,
            inuse_space_stderr: stderr_mib * MIB as f64,
            alloc_space_stderr: 2.0 * stderr_mib * MIB as f64,
            samples: 2 * samples,
            inuse_samples: samples,
        }
    }

    /// The rows of the sites' table: each row's cells as text, and the row's node.
    fn table_rows<'a, 'i>(
        doc: &'a roxmltree::Document<'i>,
    ) -> Vec<(Vec<String>, roxmltree::Node<'a, 'i>)> {
        let table = with_class(doc, "table", "sites")[0];
        table
            .descendants()
            .filter(|n| n.has_tag_name("tr") && n.parent().unwrap().has_tag_name("tbody"))
            .map(|row| {
                let cells = row
                    .children()
                    .filter(|c| c.has_tag_name("td"))
                    .map(text)
                    .collect();
                (cells, row)
            })
            .collect()
    }

    #[test]
    fn sites_show_their_error_bars_and_hostile_names_are_escaped() {
        let hostile = "<script>alert(\"x & y's\")</script>";
        let sites = [
            site("app::cache", "/src/app/cache.rs", 40, 4.5, 70),
            site(hostile, "/src/<a href='x'>&amp;.rs", 3, 1.5, 3),
        ];
        let html = exact_page(&[], &sites, 512 << 10);
        assert!(!html.contains("<script"), "{html}");
        let doc = parse(&html);
        let rows = table_rows(&doc);
        assert_eq!(rows.len(), 2);
        let (cells, _) = &rows[0];
        assert_eq!(cells[0], "40.00 MiB ± 4.50 MiB");
        assert_eq!(cells[2], "70");
        assert_eq!(cells[3], "80.00 MiB ± 9.00 MiB");
        assert_eq!(cells[4], "140");
        assert_eq!(cells[5], "app::cachecache.rs:7");
        // Few samples: marked, as in the text report.
        let (cells, row) = &rows[1];
        assert_eq!(cells[0], "3.00 MiB ± 1.50 MiB*");
        assert_eq!(cells[3], "6.00 MiB ± 3.00 MiB*");
        let function = row
            .descendants()
            .find(|n| n.attribute("class") == Some("fn"))
            .unwrap();
        assert_eq!(text(function), hostile);
        let file = row
            .descendants()
            .find(|n| n.attribute("class") == Some("file"))
            .unwrap();
        assert_eq!(file.attribute("title"), Some("/src/<a href='x'>&amp;.rs"));
        assert_eq!(text(file), "<a href='x'>&amp;.rs:7");

        // The bars share one scale, on which the widest figure plus its error fills the bar; the whiskers
        // reach one standard error either side.
        let scale = (BAR_WIDTH - 2.0) / (44.5 * MIB as f64);
        for ((_, row), site) in rows.iter().zip(&sites) {
            let bar = row.descendants().find(|n| n.has_tag_name("rect")).unwrap();
            assert!((number(bar, "width") - site.inuse_space as f64 * scale).abs() < 0.06);
            let whisker = row.descendants().find(|n| n.has_tag_name("path")).unwrap();
            let d = whisker.attribute("d").unwrap();
            let low = (site.inuse_space as f64 - site.inuse_space_stderr) * scale;
            let high = (site.inuse_space as f64 + site.inuse_space_stderr) * scale;
            assert!(
                d.starts_with(&format!("M{low:.1} 7H{high:.1}")),
                "{d} for {low} to {high}"
            );
        }

        // Exact mode: exact figures, no error bars.
        let exact = [site("app::cache", "/src/app/cache.rs", 40, 0.0, 1)];
        let html = exact_page(&[], &exact, 1);
        let doc = parse(&html);
        let rows = table_rows(&doc);
        assert_eq!(rows[0].0[0], "40.00 MiB");
        assert!(rows[0].1.descendants().all(|n| !n.has_tag_name("path")));
        assert!(!html.contains('±') && html.contains("every allocation is recorded"));
    }

    #[test]
    fn the_table_shows_the_top_ten_and_counts_the_rest() {
        let sites: Vec<Site> = (0..13)
            .map(|i| site(&format!("app::f{i}"), "", 13 - i, 0.0, 20))
            .collect();
        let html = exact_page(&[], &sites, 1);
        let doc = parse(&html);
        let rows = table_rows(&doc);
        assert_eq!(rows.len(), TOP);
        assert!(rows[9].0[5].starts_with("app::f9"));
        assert!(html.contains("… 3 more sites: <a href=\"heap?debug=1\">all of them as text</a>"));
    }

    #[test]
    fn a_failed_profile_is_said_and_the_rest_shown() {
        let html = page(
            &[],
            None,
            &crate::stats(),
            Err(&Error::NotInstalled),
            DEFAULT_PATH,
        );
        let doc = parse(&html);
        let none = text(
            doc.descendants()
                .find(|n| {
                    n.attribute("class") == Some("none") && text(*n).starts_with("No profile")
                })
                .unwrap(),
        );
        assert_eq!(none, format!("No profile: {}", Error::NotInstalled));
        assert!(html.contains("heap-sampler's server and its axum router take one while they run"));
    }

    #[test]
    fn the_page_links_every_profile_and_view() {
        let html = exact_page(&[], &[], 512 << 10);
        let doc = parse(&html);
        let links: Vec<&str> = doc
            .descendants()
            .filter_map(|n| n.attribute("href"))
            .collect();
        for profile in ["heap", "allocs", "peak"] {
            for view in ["?format=svg", "?debug=1", "?format=folded", ""] {
                let link = format!("{profile}{view}");
                assert!(links.contains(&link.as_str()), "{link} in {links:?}");
            }
        }
        assert!(html.contains("go tool pprof 'http://HOST/debug/pprof/allocs?seconds=30'"));
        // Under a prefix, the page names its own path, escaped.
        let nested = page(
            &[],
            None,
            &crate::stats(),
            Ok((&[], 1)),
            "/admin/<x>/debug/pprof/",
        );
        assert!(
            nested.contains(
                "go tool pprof 'http://HOST/admin/&lt;x&gt;/debug/pprof/allocs?seconds=30'"
            )
        );
        assert!(nested.contains("<title>/admin/&lt;x&gt;/debug/pprof/ · heap-sampler</title>"));
        assert!(!nested.contains("HOST/debug/pprof/"));
        // Self-contained: nothing is loaded from elsewhere, and nothing runs.
        assert!(doc.descendants().all(|n| n.attribute("src").is_none()
            && !n.has_tag_name("script")
            && !n.has_tag_name("link")));
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(byte_ticks(0), (1, 1));
        assert_eq!(byte_ticks(900), (200, 5));
        assert_eq!(byte_ticks(1024), (256, 4));
        assert_eq!(byte_ticks(83 * MIB), (20 * MIB, 5));
        assert_eq!(byte_ticks(5 * MIB / 2), (MIB / 2, 5));
        assert_eq!(byte_ticks(3 << 30), (1 << 30, 3));
        assert_eq!(time_step(600.0), 120);
        assert_eq!(time_step(40.0), 10);
        assert_eq!(age_label(0), "now");
        assert_eq!(age_label(45), "−45 s");
        assert_eq!(age_label(600), "−10 min");
        assert_eq!(age_label(5400), "−1 h 30 min");
        // Nothing held and nothing uncertain: no error to show.
        assert_eq!(space(0, 0.0, 0, false), "0 B");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_034_179), "1,034,179");
        assert_eq!(grouped(-12_345), "-12,345");
    }

    #[test]
    fn text_is_escaped_for_html_and_xml() {
        assert_eq!(escape("app::f"), "app::f");
        assert_eq!(
            escape("<a href=\"x\">&'\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;\u{FFFD}"
        );
    }
}
