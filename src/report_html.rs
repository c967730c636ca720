//! The HTML run report (`<db>.report.html`): one self-contained file a
//! person opens the morning after — the summary of the Markdown report,
//! then five plots of the run's timeline (rows finished, requests per
//! second, outcomes with the 429-gate and backoff periods shaded, latency
//! percentiles, errors), each with its numbers in a `<details>` table.
//!
//! The plots are SVG written here directly (axes, ticks, paths): a plotting
//! crate would need a font rasteriser to lay out its text and paints fixed
//! colours, while this SVG leaves text to the browser and takes its colours
//! from CSS, so the page follows `prefers-color-scheme`. No script, no
//! request to any host (a Content-Security-Policy says so), no customer
//! data: counts, durations, error codes, row numbers and the commands to
//! run next.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{Local, TimeZone};

use crate::report::Report;
use crate::status::headline;
use crate::store::timeline::ErrorRows;
use crate::timeline::{Bucket, Class, Sketch};

/// Most columns (time buckets) a plot shows; more are merged.
pub const MAX_COLUMNS: usize = 720;
/// Row numbers listed per error code.
pub const FIRST_ROWS: usize = 10;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 48.0;

/// The HTML report's path beside the Markdown one.
pub fn path(md: &Path) -> PathBuf {
    md.with_extension("html")
}

/// Everything the page shows.
pub struct Page<'a> {
    pub report: &'a Report,
    pub timeline: &'a [Bucket],
    pub errors: &'a [ErrorRows],
}

/// Writes the page (mode 0600), replacing the earlier one whole.
pub fn write(page: &Page<'_>, path: &Path) -> std::io::Result<()> {
    let mut file = crate::files::replace_private(path)?;
    file.write_all(render(page).as_bytes())?;
    file.commit()
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A column of the plots: one or more stored buckets merged.
struct Column {
    bucket: Bucket,
    /// Seconds the column spans.
    seconds: f64,
    /// Follows the previous column without a gap.
    joined: bool,
}

impl Column {
    fn end_ms(&self) -> i64 {
        self.bucket.start_ms + self.bucket.width_ms
    }
}

/// Merges stored buckets into at most [`MAX_COLUMNS`] columns of one
/// width (a power of two of the widest bucket), keeping gaps (time
/// without buckets: the run was not running) as gaps.
fn columns(buckets: &[Bucket]) -> Vec<Column> {
    let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
        return Vec::new();
    };
    let span = (last.start_ms + last.width_ms - first.start_ms).max(1);
    let mut width = buckets
        .iter()
        .map(|b| b.width_ms)
        .max()
        .unwrap_or(1000)
        .max(1);
    while span / width >= MAX_COLUMNS as i64 {
        width *= 2;
    }
    let mut out: Vec<Column> = Vec::new();
    let mut key = i64::MIN;
    for b in buckets {
        let k = (b.start_ms - first.start_ms) / width;
        match out.last_mut() {
            Some(col) if k == key => col.bucket.merge(b),
            _ => {
                let joined = out
                    .last()
                    .is_some_and(|prev: &Column| b.start_ms <= prev.end_ms() + width / 2);
                let mut bucket = b.clone();
                bucket.start_ms = first.start_ms + k * width;
                bucket.width_ms = width;
                out.push(Column {
                    bucket,
                    seconds: width as f64 / 1000.0,
                    joined,
                });
                key = k;
            }
        }
    }
    out
}

fn local(ms: i64) -> chrono::DateTime<Local> {
    Local
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(|| Local.timestamp_millis_opt(0).unwrap())
}

/// The local zone as an offset from UTC, e.g. `UTC+02:00`.
fn zone(ms: i64) -> String {
    format!("UTC{}", local(ms).format("%:z"))
}

/// A time for tables: local date and time.
fn when(ms: i64) -> String {
    local(ms).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Nice tick steps for a time axis, in seconds.
const TIME_STEPS: &[i64] = &[
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
];

/// A step of 1, 2 or 5 × 10^k giving about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn number(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// One plot's frame: time on x (unix ms), a value on y.
struct Chart {
    t0: i64,
    t1: i64,
    y_max: f64,
    svg: String,
}

impl Chart {
    fn new(id: &str, title: &str, t0: i64, t1: i64, y_max: f64, y_label: &str) -> Chart {
        let t1 = t1.max(t0 + 1000);
        let y_max = if y_max > 0.0 {
            let step = nice_step(y_max, 5.0);
            (y_max / step).ceil() * step
        } else {
            1.0
        };
        let mut chart = Chart {
            t0,
            t1,
            y_max,
            svg: String::new(),
        };
        let _ = write!(
            chart.svg,
            r#"<svg id="{id}" class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
            esc(title),
            esc(title)
        );
        chart.axes(y_label);
        chart
    }

    fn x(&self, ms: i64) -> f64 {
        LEFT + (ms - self.t0) as f64 / (self.t1 - self.t0) as f64 * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v / self.y_max).clamp(0.0, 1.05) * (HEIGHT - TOP - BOTTOM)
    }

    fn axes(&mut self, y_label: &str) {
        let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
        // Value ticks and grid.
        let step = nice_step(self.y_max, 5.0);
        let mut v = 0.0;
        while v <= self.y_max + step / 2.0 {
            let y = self.y(v);
            let _ = write!(
                self.svg,
                r#"<line class="grid" x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 6.0,
                y + 4.0,
                number(v)
            );
            v += step;
        }
        // Time ticks: local time at whole multiples of a nice step.
        let span_s = ((self.t1 - self.t0) / 1000).max(1);
        let step_s = TIME_STEPS
            .iter()
            .copied()
            .find(|s| span_s / s <= 8)
            .unwrap_or(86400);
        let offset_s = i64::from(local(self.t0).offset().local_minus_utc());
        let step_ms = step_s * 1000;
        let first_local = ((self.t0 / 1000 + offset_s) / step_s + 1) * step_s;
        let mut t = (first_local - offset_s) * 1000;
        let format = if step_s >= 60 { "%H:%M" } else { "%H:%M:%S" };
        while t <= self.t1 {
            let x = self.x(t);
            let _ = write!(
                self.svg,
                r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                y0 + 16.0,
                local(t).format(format)
            );
            t += step_ms;
        }
        let _ = write!(
            self.svg,
            r#"<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/><line class="axis" x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">time (local, {}), from {}</text><text class="label" transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            HEIGHT - 8.0,
            zone(self.t0),
            esc(&when(self.t0)),
            (y0 + y1) / 2.0,
            esc(y_label)
        );
    }

    /// A line through `(t, v)` points; `None` breaks it (a gap).
    fn line(&mut self, class: &str, points: &[Option<(i64, f64)>]) {
        let mut d = String::new();
        let mut pen_down = false;
        for p in points {
            match p {
                Some((t, v)) => {
                    let _ = write!(
                        d,
                        "{}{:.1} {:.1}",
                        if pen_down { " L" } else { " M" },
                        self.x(*t),
                        self.y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(self.svg, r#"<path class="{class}" d="{}"/>"#, d.trim());
        }
    }

    /// A filled band between `low` and `high` over `[t, t + width)`.
    fn band(&mut self, class: &str, t: i64, width: i64, low: f64, high: f64) {
        if high <= low {
            return;
        }
        let (x0, x1) = (self.x(t), self.x(t + width));
        let (y0, y1) = (self.y(high), self.y(low));
        let _ = write!(
            self.svg,
            r#"<rect class="{class}" x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}"/>"#,
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.0)
        );
    }

    /// A shaded span over the whole height, `share` of it opaque.
    fn shade(&mut self, class: &str, t: i64, width: i64, share: f64) {
        let (x0, x1) = (self.x(t), self.x(t + width));
        let _ = write!(
            self.svg,
            r#"<rect class="{class}" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill-opacity="{:.2}"/>"#,
            (x1 - x0).max(0.5),
            HEIGHT - TOP - BOTTOM,
            0.12 + 0.28 * share.clamp(0.0, 1.0)
        );
    }

    fn finish(mut self, legend: &[(String, String)]) -> String {
        self.svg.push_str("</svg>");
        let mut html = String::from(r#"<div class="chart">"#);
        html.push_str(&self.svg);
        html.push_str(r#"<ul class="legend">"#);
        for (class, name) in legend {
            let _ = write!(
                html,
                r#"<li><span class="key {class}"></span>{}</li>"#,
                esc(name)
            );
        }
        html.push_str("</ul></div>");
        html
    }
}

/// A table: header, body rows, footer rows; `ids` names footer cells.
fn table(head: &[String], body: &[Vec<String>], foot: &[Vec<(String, Option<String>)>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in body {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", esc(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody>");
    if !foot.is_empty() {
        out.push_str("<tfoot>");
        for row in foot {
            out.push_str("<tr>");
            for (cell, id) in row {
                match id {
                    Some(id) => {
                        let _ = write!(out, r#"<td id="{}">{}</td>"#, esc(id), esc(cell));
                    }
                    None => {
                        let _ = write!(out, "<td>{}</td>", esc(cell));
                    }
                }
            }
            out.push_str("</tr>");
        }
        out.push_str("</tfoot>");
    }
    out.push_str("</table>");
    out
}

fn details(table: String) -> String {
    format!("<details><summary>The numbers</summary>{table}</details>")
}

fn section(id: &str, title: &str, what: &str, body: String) -> String {
    format!(
        r#"<section class="figure" id="{id}"><h2>{}</h2><p class="what">{}</p>{body}</section>"#,
        esc(title),
        esc(what)
    )
}

/// Names used in a series, in order of first appearance.
fn names<'a>(cols: &'a [Column], pick: impl Fn(&'a Bucket) -> Vec<&'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for c in cols {
        for n in pick(&c.bucket) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

fn rows_of(b: &Bucket, label: &str) -> u64 {
    b.rows
        .iter()
        .find(|(l, _)| l == label)
        .map_or(0, |(_, n)| *n)
}

fn endpoint<'a>(b: &'a Bucket, name: &str) -> Option<&'a crate::timeline::EndpointStats> {
    b.endpoints.iter().find(|(e, _)| e == name).map(|(_, s)| s)
}

/// Points at each column's end, `None` before a column after a gap.
fn series(cols: &[Column], value: impl Fn(&Column) -> f64) -> Vec<Option<(i64, f64)>> {
    let mut out = Vec::with_capacity(cols.len() * 2);
    for c in cols {
        if !c.joined {
            out.push(None);
        }
        out.push(Some((c.end_ms(), value(c))));
    }
    out
}

/// Points at each column's start and end (a step line).
fn steps(cols: &[Column], value: impl Fn(&Column) -> f64) -> Vec<Option<(i64, f64)>> {
    let mut out = Vec::with_capacity(cols.len() * 3);
    for c in cols {
        if !c.joined {
            out.push(None);
        }
        let v = value(c);
        out.push(Some((c.bucket.start_ms, v)));
        out.push(Some((c.end_ms(), v)));
    }
    out
}

fn plot_rows(page: &Page<'_>, cols: &[Column], t0: i64, t1: i64) -> String {
    let status = &page.report.status;
    let labels = names(cols, |b| b.rows.iter().map(|(l, _)| l.as_str()).collect());
    let eta = status
        .eta_seconds
        .filter(|_| status.finished_at.is_none())
        .map(|s| (s * 1000.0) as i64);
    let t1 = eta.map_or(t1, |e| t1.max(t1 + e));
    let mut chart = Chart::new(
        "plot-rows",
        "Rows finished over time, per stage",
        t0,
        t1,
        status.total as f64,
        "rows (cumulative)",
    );
    let mut legend = Vec::new();
    let mut body = Vec::new();
    let mut totals = vec![0u64; labels.len()];
    for c in cols {
        let mut row = vec![when(c.bucket.start_ms)];
        for (i, l) in labels.iter().enumerate() {
            totals[i] += rows_of(&c.bucket, l);
            row.push(format!("{} ({})", rows_of(&c.bucket, l), totals[i]));
        }
        body.push(row);
    }
    for (i, l) in labels.iter().enumerate() {
        let mut sum = 0u64;
        let points: Vec<Option<(i64, f64)>> = cols
            .iter()
            .flat_map(|c| {
                sum += rows_of(&c.bucket, l);
                let gap = (!c.joined).then_some(None);
                gap.into_iter().chain([Some((c.end_ms(), sum as f64))])
            })
            .collect();
        let class = format!("c{} line", i % 8);
        chart.line(&class, &points);
        legend.push((format!("c{}", i % 8), format!("{l} (rows)")));
    }
    // The total to reach, and where the rate so far would reach it.
    chart.line(
        "total",
        &[
            Some((t0, status.total as f64)),
            Some((t1, status.total as f64)),
        ],
    );
    legend.push(("total".into(), format!("all rows ({})", status.total)));
    if let (Some(eta_ms), Some(last)) = (eta, cols.last()) {
        let finished: u64 = status
            .states
            .iter()
            .filter(|(s, _)| {
                ["done", "failed", "rejected", "skipped", "unknown"].contains(&s.as_str())
            })
            .map(|(_, n)| n)
            .sum();
        chart.line(
            "eta",
            &[
                Some((last.end_ms(), finished as f64)),
                Some((last.end_ms() + eta_ms, status.total as f64)),
            ],
        );
        legend.push((
            "eta".into(),
            format!(
                "ETA at the rate so far: about {:.0} s to go",
                eta_ms as f64 / 1000.0
            ),
        ));
    }
    let mut head = vec![format!("bucket start (local, {})", zone(t0))];
    head.extend(labels.iter().map(|l| format!("{l}: rows (cumulative)")));
    let mut foot = vec![("total".to_string(), None)];
    foot.extend(
        labels
            .iter()
            .zip(&totals)
            .map(|(l, n)| (n.to_string(), Some(format!("total-rows-{l}")))),
    );
    section(
        "rows",
        "1. Rows finished over time",
        "Rows that finished each stage (create, refresh, token, …) or reached a final state (failed, unknown, skipped), cumulative; the dashed line is the estimate of when the run ends at its rate so far, while it runs.",
        chart.finish(&legend) + &details(table(&head, &body, &[foot])),
    )
}

fn plot_requests(cols: &[Column], t0: i64, t1: i64) -> String {
    let endpoints = names(cols, |b| {
        b.endpoints.iter().map(|(e, _)| e.as_str()).collect()
    });
    let rate =
        |c: &Column, e: &str| endpoint(&c.bucket, e).map_or(0, |s| s.requests) as f64 / c.seconds;
    let y_max = cols
        .iter()
        .map(|c| {
            let total: f64 = endpoints.iter().map(|e| rate(c, e)).sum();
            total.max(f64::from(c.bucket.rate_limit.unwrap_or(0)))
        })
        .fold(0.0, f64::max);
    let mut chart = Chart::new(
        "plot-requests",
        "Requests per second by endpoint (stacked)",
        t0,
        t1,
        y_max,
        "requests per second",
    );
    let mut legend = Vec::new();
    for c in cols {
        let mut low = 0.0;
        for (i, e) in endpoints.iter().enumerate() {
            let high = low + rate(c, e);
            chart.band(
                &format!("c{} area", i % 8),
                c.bucket.start_ms,
                c.bucket.width_ms,
                low,
                high,
            );
            low = high;
        }
    }
    for (i, e) in endpoints.iter().enumerate() {
        legend.push((format!("c{}", i % 8), e.to_string()));
    }
    if cols.iter().any(|c| c.bucket.rate_limit.is_some()) {
        let points = steps(cols, |c| f64::from(c.bucket.rate_limit.unwrap_or(0)));
        chart.line("limit", &points);
        legend.push(("limit".into(), "--rate limit".into()));
    }
    let mut head = vec![
        format!("bucket start (local, {})", zone(t0)),
        "seconds".into(),
    ];
    head.extend(endpoints.iter().map(|e| format!("{e}: requests")));
    head.push("--rate".into());
    let mut totals = vec![0u64; endpoints.len()];
    let body: Vec<Vec<String>> = cols
        .iter()
        .map(|c| {
            let mut row = vec![when(c.bucket.start_ms), number(c.seconds)];
            for (i, e) in endpoints.iter().enumerate() {
                let n = endpoint(&c.bucket, e).map_or(0, |s| s.requests);
                totals[i] += n;
                row.push(n.to_string());
            }
            row.push(
                c.bucket
                    .rate_limit
                    .map_or("unlimited".into(), |r| r.to_string()),
            );
            row
        })
        .collect();
    let mut foot = vec![("total".to_string(), None), (String::new(), None)];
    foot.extend(
        endpoints
            .iter()
            .zip(&totals)
            .map(|(e, n)| (n.to_string(), Some(format!("total-requests-{e}")))),
    );
    foot.push((String::new(), None));
    section(
        "requests",
        "2. Requests per second",
        "Requests that left per second, stacked by endpoint, against the --rate limit.",
        chart.finish(&legend) + &details(table(&head, &body, &[foot])),
    )
}

fn outcome(b: &Bucket, class: Class) -> u64 {
    b.endpoints
        .iter()
        .map(|(_, s)| s.outcomes[class as usize])
        .sum()
}

fn plot_outcomes(cols: &[Column], t0: i64, t1: i64) -> String {
    let y_max = cols
        .iter()
        .flat_map(|c| Class::ALL.map(|k| outcome(&c.bucket, k) as f64 / c.seconds))
        .fold(0.0, f64::max);
    let mut chart = Chart::new(
        "plot-outcomes",
        "Outcomes over time",
        t0,
        t1,
        y_max,
        "answers per second",
    );
    for c in cols {
        let width = c.bucket.width_ms as f64;
        if c.bucket.gate_ms > 0 {
            chart.shade(
                "gate",
                c.bucket.start_ms,
                c.bucket.width_ms,
                c.bucket.gate_ms as f64 / width,
            );
        }
        if c.bucket.backoff_ms > 0 {
            chart.shade(
                "backoff",
                c.bucket.start_ms,
                c.bucket.width_ms,
                c.bucket.backoff_ms as f64 / width,
            );
        }
    }
    let mut legend = Vec::new();
    for (i, class) in Class::ALL.into_iter().enumerate() {
        if cols.iter().all(|c| outcome(&c.bucket, class) == 0) {
            continue;
        }
        let points = series(cols, |c| outcome(&c.bucket, class) as f64 / c.seconds);
        chart.line(&format!("o{i} line"), &points);
        legend.push((format!("o{i}"), class.name().to_string()));
    }
    legend.push((
        "gate".into(),
        "held by a 429 gate (darker: more of the bucket)".into(),
    ));
    legend.push(("backoff".into(), "a customer in backoff".into()));
    let mut head = vec![format!("bucket start (local, {})", zone(t0))];
    head.extend(Class::ALL.iter().map(|c| c.name().to_string()));
    head.push("429 gate, s".into());
    head.push("backoff, s".into());
    let mut totals = [0u64; 7];
    let (mut gate, mut backoff) = (0i64, 0i64);
    let body: Vec<Vec<String>> = cols
        .iter()
        .map(|c| {
            let mut row = vec![when(c.bucket.start_ms)];
            for (i, class) in Class::ALL.into_iter().enumerate() {
                let n = outcome(&c.bucket, class);
                totals[i] += n;
                row.push(n.to_string());
            }
            gate += c.bucket.gate_ms;
            backoff += c.bucket.backoff_ms;
            row.push(format!("{:.1}", c.bucket.gate_ms as f64 / 1000.0));
            row.push(format!("{:.1}", c.bucket.backoff_ms as f64 / 1000.0));
            row
        })
        .collect();
    let mut foot = vec![("total".to_string(), None)];
    foot.extend(
        Class::ALL
            .iter()
            .zip(totals)
            .map(|(c, n)| (n.to_string(), Some(format!("total-outcome-{}", c.name())))),
    );
    foot.push((
        format!("{:.1}", gate as f64 / 1000.0),
        Some("total-gate-seconds".into()),
    ));
    foot.push((
        format!("{:.1}", backoff as f64 / 1000.0),
        Some("total-backoff-seconds".into()),
    ));
    section(
        "outcomes",
        "3. Outcomes over time",
        "Answers per second by class: ok, 429 (rate limited), 5xx, timeouts, dropped connections, refused connections, other failures. Shaded: time a 429 gate held every request (red) or a customer slept in backoff (amber).",
        chart.finish(&legend) + &details(table(&head, &body, &[foot])),
    )
}

fn plot_latency(cols: &[Column], t0: i64, t1: i64) -> String {
    let endpoints = names(cols, |b| {
        b.endpoints.iter().map(|(e, _)| e.as_str()).collect()
    });
    const QS: [(f64, &str, &str); 3] = [
        (0.5, "p50", "q50"),
        (0.95, "p95", "q95"),
        (0.99, "p99", "q99"),
    ];
    let q =
        |c: &Column, e: &str, q: f64| endpoint(&c.bucket, e).and_then(|s| s.latency.quantile_ms(q));
    let y_max = cols
        .iter()
        .flat_map(|c| endpoints.iter().filter_map(move |e| q(c, e, 0.99)))
        .fold(0.0, f64::max);
    let mut chart = Chart::new(
        "plot-latency",
        "Latency percentiles per endpoint",
        t0,
        t1,
        y_max,
        "latency, ms",
    );
    let mut legend = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        for (quantile, name, class) in QS {
            let mut points = Vec::new();
            for c in cols {
                match q(c, e, quantile) {
                    Some(v) if c.joined || points.is_empty() => points.push(Some((c.end_ms(), v))),
                    Some(v) => {
                        points.push(None);
                        points.push(Some((c.end_ms(), v)));
                    }
                    None => points.push(None),
                }
            }
            chart.line(&format!("c{} {class} line", i % 8), &points);
            legend.push((format!("c{} {class}", i % 8), format!("{e} {name}")));
        }
    }
    let mut head = vec![format!("bucket start (local, {})", zone(t0))];
    for e in &endpoints {
        for (_, name, _) in QS {
            head.push(format!("{e} {name}, ms"));
        }
    }
    let body: Vec<Vec<String>> = cols
        .iter()
        .map(|c| {
            let mut row = vec![when(c.bucket.start_ms)];
            for e in &endpoints {
                for (quantile, _, _) in QS {
                    row.push(q(c, e, quantile).map_or("—".into(), |v| format!("{v:.1}")));
                }
            }
            row
        })
        .collect();
    // Whole-run percentiles.
    let mut foot = vec![("whole run".to_string(), None)];
    for e in &endpoints {
        let mut all = Sketch::default();
        for c in cols {
            if let Some(s) = endpoint(&c.bucket, e) {
                all.merge(&s.latency);
            }
        }
        for (quantile, name, _) in QS {
            foot.push((
                all.quantile_ms(quantile)
                    .map_or("—".into(), |v| format!("{v:.1}")),
                Some(format!("total-latency-{e}-{name}")),
            ));
        }
    }
    section(
        "latency",
        "4. Latency over time",
        &format!(
            "p50 (solid), p95 (dashed) and p99 (dotted) of the time from a request leaving to its answer, per endpoint; each within {:.1} % of the exact value.",
            crate::timeline::SKETCH_RELATIVE_ERROR * 100.0
        ),
        chart.finish(&legend) + &details(table(&head, &body, &[foot])),
    )
}

fn plot_errors(page: &Page<'_>) -> String {
    let errors = page.errors;
    let mut body = String::new();
    let bar_h = 22.0;
    let height = TOP + BOTTOM + bar_h * errors.len().max(1) as f64;
    let max = errors.iter().map(|e| e.count).max().unwrap_or(0).max(1) as f64;
    let label_w = 260.0;
    let _ = write!(
        body,
        r#"<div class="chart"><svg id="plot-errors" class="plot" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="Rows by error" xmlns="http://www.w3.org/2000/svg"><title>Rows by error code</title>"#
    );
    let x0 = label_w;
    let x1 = WIDTH - RIGHT - 60.0;
    for (i, e) in errors.iter().enumerate() {
        let y = TOP + bar_h * i as f64;
        let w = (e.count as f64 / max * (x1 - x0)).max(1.0);
        let _ = write!(
            body,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{} ({})</text><rect class="{} bar" x="{x0}" y="{:.1}" width="{w:.1}" height="{:.1}"/><text class="tick" x="{:.1}" y="{:.1}">{}</text>"#,
            x0 - 6.0,
            y + bar_h * 0.65,
            esc(&e.code),
            esc(&e.state),
            if e.state == "unknown" { "o3" } else { "o2" },
            y + 3.0,
            bar_h - 6.0,
            x0 + w + 6.0,
            y + bar_h * 0.65,
            e.count
        );
    }
    if errors.is_empty() {
        let _ = write!(
            body,
            r#"<text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">No failed, rejected or unknown rows.</text>"#,
            WIDTH / 2.0,
            TOP + bar_h * 0.7
        );
    }
    let y0 = height - BOTTOM + 8.0;
    let _ = write!(
        body,
        r#"<line class="axis" x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}"/><text class="label" x="{:.1}" y="{:.1}" text-anchor="middle">rows (count), by error code and state</text></svg></div>"#,
        (x0 + x1) / 2.0,
        height - 12.0
    );
    let head = vec![
        "error code".to_string(),
        "state".into(),
        "rows".into(),
        format!("first {FIRST_ROWS} row numbers"),
        "example".into(),
    ];
    let rows: Vec<Vec<String>> = errors
        .iter()
        .map(|e| {
            let example = page
                .report
                .status
                .errors
                .iter()
                .find(|s| s.code == e.code)
                .map(|s| s.example.clone())
                .unwrap_or_default();
            vec![
                e.code.clone(),
                e.state.clone(),
                e.count.to_string(),
                e.first
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                example,
            ]
        })
        .collect();
    let mut next = String::from(
        "<h3>Next</h3><p>Resume (safe at any time; finished work is never repeated):</p>",
    );
    let _ = write!(
        next,
        "<pre><code>{}</code></pre>",
        esc(&page.report.resume_command)
    );
    if let Some(retry) = &page.report.retry_command {
        let _ = write!(
            next,
            "<p>Retry the failed rows:</p><pre><code>{}</code></pre>",
            esc(retry)
        );
    }
    section(
        "errors",
        "5. Errors",
        "Rows that failed, were rejected or are left unknown, by error code, with the first row numbers of each; then the commands to run next.",
        body + &details(table(&head, &rows, &[])) + &next,
    )
}

fn summary(report: &Report) -> String {
    let s = &report.status;
    let mut out = String::new();
    let facts: Vec<(&str, String)> = vec![
        ("outcome", report.outcome.clone()),
        ("command", s.command.clone()),
        ("input", s.input.clone()),
        ("fingerprint", s.fingerprint.clone()),
        ("started", s.started_at.clone()),
        (
            "finished",
            s.finished_at.clone().unwrap_or_else(|| "—".into()),
        ),
        ("rows", s.total.to_string()),
        (
            "requests per row",
            format!("{:.2}", report.requests_per_row),
        ),
        ("rows/s", format!("{:.1}", s.rows_per_second)),
        ("requests/s", format!("{:.1}", s.requests_per_second)),
    ];
    out.push_str(r#"<div class="tables"><table class="facts"><tbody>"#);
    for (k, v) in facts {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    out.push_str("</tbody></table>");
    let states: Vec<Vec<String>> = s
        .states
        .iter()
        .map(|(k, n)| vec![k.clone(), n.to_string()])
        .collect();
    out.push_str(&table(&["state".into(), "rows".into()], &states, &[]));
    let requests: Vec<Vec<String>> = s
        .requests
        .iter()
        .map(|(k, n)| vec![k.clone(), n.to_string()])
        .collect();
    out.push_str(&table(
        &["endpoint".into(), "requests".into()],
        &requests,
        &[],
    ));
    if !report.stages.is_empty() {
        let stages: Vec<Vec<String>> = report
            .stages
            .iter()
            .map(|t| {
                vec![
                    t.stage.clone(),
                    t.rows.to_string(),
                    format!("{:.2}", t.seconds),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "stage (this invocation)".into(),
                "rows".into(),
                "seconds".into(),
            ],
            &stages,
            &[],
        ));
    }
    out.push_str("</div>");
    out
}

const STYLE: &str = r#"
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1d232b; --muted: #5b6673; --grid: #e3e7ec;
  --c0: #1f77b4; --c1: #e8710a; --c2: #2a9d3a; --c3: #9467bd; --c4: #8c564b; --c5: #d6369a; --c6: #5f6b7a; --c7: #17a2b8;
  --ok: #2a9d3a; --r429: #d62728; --r5xx: #e8710a; --timeout: #9467bd; --dropped: #8c564b; --refused: #d6369a; --other: #5f6b7a;
  --gate: #d62728; --backoff: #f0b400; }
@media (prefers-color-scheme: dark) { :root { --bg: #15191e; --fg: #e6e9ed; --muted: #9aa5b1; --grid: #2c333b;
  --c0: #5aa9e6; --c1: #ff9f43; --c2: #5cd65c; --c3: #b99af0; --c4: #c99a86; --c5: #f06bbf; --c6: #a0aab5; --c7: #4fd1e0;
  --ok: #5cd65c; --r429: #ff6b6b; --r5xx: #ff9f43; --timeout: #b99af0; --dropped: #c99a86; --refused: #f06bbf; --other: #a0aab5;
  --gate: #ff6b6b; --backoff: #ffd23f; } }
body { background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1000px; padding: 16px; }
h1 { font-size: 1.4em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1.4em 0 0.2em; }
.headline { font-size: 1.1em; font-weight: 600; padding: 8px 12px; border-left: 4px solid var(--c0); background: color-mix(in srgb, var(--c0) 10%, transparent); }
.what { color: var(--muted); margin: 0 0 6px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--grid); padding: 2px 10px; text-align: left; }
td { text-align: right; } td:first-child, .facts td { text-align: left; }
tfoot td { font-weight: 600; }
.tables { display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: flex-start; }
details { margin: 4px 0 8px; } details table { font-size: 0.85em; display: block; max-height: 420px; overflow: auto; }
pre { background: color-mix(in srgb, var(--fg) 8%, transparent); padding: 8px; overflow-x: auto; }
svg.plot { width: 100%; height: auto; display: block; }
svg text { fill: var(--fg); font: 12px system-ui, sans-serif; } svg .label { fill: var(--muted); font-size: 12px; }
.grid { stroke: var(--grid); stroke-width: 1; } .axis { stroke: var(--muted); stroke-width: 1; }
path.line, path.total, path.eta, path.limit { fill: none; stroke-width: 1.8; stroke-linejoin: round; }
.total { stroke: var(--muted); stroke-dasharray: 2 3; } .eta { stroke: var(--fg); stroke-dasharray: 8 5; }
.limit { stroke: var(--r429); stroke-dasharray: 6 4; }
.q95 { stroke-dasharray: 7 4; } .q99 { stroke-dasharray: 2 3; }
.gate { fill: var(--gate); background: var(--gate); } .backoff { fill: var(--backoff); background: var(--backoff); }
.c0 { stroke: var(--c0); fill: var(--c0); background: var(--c0); } .c1 { stroke: var(--c1); fill: var(--c1); background: var(--c1); }
.c2 { stroke: var(--c2); fill: var(--c2); background: var(--c2); } .c3 { stroke: var(--c3); fill: var(--c3); background: var(--c3); }
.c4 { stroke: var(--c4); fill: var(--c4); background: var(--c4); } .c5 { stroke: var(--c5); fill: var(--c5); background: var(--c5); }
.c6 { stroke: var(--c6); fill: var(--c6); background: var(--c6); } .c7 { stroke: var(--c7); fill: var(--c7); background: var(--c7); }
.o0 { stroke: var(--ok); background: var(--ok); } .o1 { stroke: var(--r429); background: var(--r429); } .o2 { stroke: var(--r5xx); fill: var(--r5xx); background: var(--r5xx); }
.o3 { stroke: var(--timeout); fill: var(--timeout); background: var(--timeout); } .o4 { stroke: var(--dropped); background: var(--dropped); }
.o5 { stroke: var(--refused); background: var(--refused); } .o6 { stroke: var(--other); background: var(--other); }
path.line { fill: none; } rect.area { stroke: none; fill-opacity: 0.85; } rect.bar { stroke: none; }
.legend { list-style: none; padding: 0; margin: 2px 0 0 70px; display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 0.85em; }
.key { display: inline-block; width: 18px; height: 4px; margin: 0 6px 3px 0; vertical-align: middle; }
.key.total { background: var(--muted); } .key.eta { background: var(--fg); } .key.limit { background: var(--r429); }
.key.gate, .key.backoff { height: 10px; opacity: 0.5; }
"#;

/// The page.
pub fn render(page: &Page<'_>) -> String {
    let report = page.report;
    let cols = columns(page.timeline);
    let (t0, t1) = match (cols.first(), cols.last()) {
        (Some(a), Some(b)) => (a.bucket.start_ms, b.end_ms()),
        _ => {
            let now = chrono::Utc::now().timestamp_millis();
            (now - 1000, now)
        }
    };
    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; script-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>orderbatch run {} — {}</title><style>{STYLE}</style></head><body>
<h1>orderbatch run {} — {}</h1>
<p class="headline" id="headline">{}</p>
"#,
        report.status.run_id,
        esc(&report.outcome),
        report.status.run_id,
        esc(&report.outcome),
        esc(&headline(&report.status)),
    );
    html.push_str(&summary(report));
    if cols.is_empty() {
        html.push_str("<p>This run has no timeline (it ran before orderbatch recorded one).</p>");
    }
    html.push_str(&plot_rows(page, &cols, t0, t1));
    html.push_str(&plot_requests(&cols, t0, t1));
    html.push_str(&plot_outcomes(&cols, t0, t1));
    html.push_str(&plot_latency(&cols, t0, t1));
    html.push_str(&plot_errors(page));
    let _ = writeln!(
        html,
        "<p class=\"what\">Times are local ({}); bucket widths {} s. Written {}.</p></body></html>",
        zone(t0),
        cols.first().map_or(1.0, |c| c.seconds),
        esc(&when(chrono::Utc::now().timestamp_millis()))
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start_s: i64, width_s: i64, requests: u64) -> Bucket {
        Bucket {
            start_ms: start_s * 1000,
            width_ms: width_s * 1000,
            endpoints: vec![(
                "create_order".into(),
                crate::timeline::EndpointStats {
                    requests,
                    ..Default::default()
                },
            )],
            ..Default::default()
        }
    }

    #[test]
    fn columns_keep_counts_and_gaps_and_stay_few() {
        // Two invocations with a gap of an hour between them.
        let mut buckets: Vec<Bucket> = (0..100).map(|s| bucket(1_000 + s, 1, 2)).collect();
        buckets.extend((0..50).map(|s| bucket(10_000 + s, 1, 3)));
        let cols = columns(&buckets);
        assert!(cols.len() <= MAX_COLUMNS);
        let total: u64 = cols.iter().map(|c| c.bucket.endpoints[0].1.requests).sum();
        assert_eq!(total, 350);
        assert_eq!(cols.iter().filter(|c| !c.joined).count(), 2, "one gap");
        // A long run's buckets are merged to at most MAX_COLUMNS.
        let long: Vec<Bucket> = (0..5_000).map(|s| bucket(s, 1, 1)).collect();
        let cols = columns(&long);
        assert!(cols.len() <= MAX_COLUMNS, "{}", cols.len());
        assert_eq!(
            cols.iter()
                .map(|c| c.bucket.endpoints[0].1.requests)
                .sum::<u64>(),
            5_000
        );
        assert!(cols.iter().skip(1).all(|c| c.joined));
    }

    #[test]
    fn a_24_hour_run_makes_a_page_under_2_mb_with_every_plot() {
        // What a day at full tilt records: MAX_BUCKETS-bounded buckets of
        // 128 s, four endpoints, each with a wide latency spread.
        let endpoints = [
            "create_order",
            "refresh_embedded_js_urls",
            "get_smart_token",
            "find_orders",
        ];
        let buckets: Vec<Bucket> = (0..675i64)
            .map(|k| {
                let mut b = Bucket {
                    start_ms: 1_700_000_000_000 + k * 128_000,
                    width_ms: 128_000,
                    rows: vec![("create".into(), 1_000 + k as u64), ("token".into(), 900)],
                    gate_ms: (k % 7) * 1000,
                    backoff_ms: (k % 5) * 1000,
                    rate_limit: Some(100),
                    ..Default::default()
                };
                for e in endpoints {
                    let mut stats = crate::timeline::EndpointStats {
                        requests: 3_000,
                        outcomes: [2_900, 40, 30, 10, 10, 5, 5],
                        ..Default::default()
                    };
                    for us in (0..60u64).map(|i| 300 * (1 + i * i)) {
                        stats.latency.add(std::time::Duration::from_micros(us));
                    }
                    b.endpoints.push((e.to_string(), stats));
                }
                b
            })
            .collect();
        let status = crate::status::RunStatus {
            run_id: 1,
            command: "run".into(),
            input: "orders.csv".into(),
            fingerprint: "f".into(),
            total: 1_000_000,
            states: [("done".to_string(), 999_986u64), ("unknown".into(), 14)].into(),
            requests: endpoints
                .iter()
                .map(|e| (e.to_string(), 2_025_000u64))
                .collect(),
            errors: Vec::new(),
            started_at: "2023-11-14T22:13:20Z".into(),
            finished_at: Some("2023-11-15T22:13:20Z".into()),
            elapsed_seconds: 86_400.0,
            rows_per_second: 11.6,
            requests_per_second: 93.7,
            eta_seconds: None,
        };
        let report = Report {
            status,
            outcome: "completed".into(),
            stages: Vec::new(),
            requests_per_row: 8.1,
            resume_command: "orderbatch run orders.csv --db s.db".into(),
            retry_command: None,
        };
        let errors = vec![ErrorRows {
            code: "timeout".into(),
            state: "unknown".into(),
            count: 14,
            first: (1..=10).collect(),
        }];
        let html = render(&Page {
            report: &report,
            timeline: &buckets,
            errors: &errors,
        });
        assert!(html.len() < 2 * 1024 * 1024, "{} bytes", html.len());
        for id in [
            "plot-rows",
            "plot-requests",
            "plot-outcomes",
            "plot-latency",
            "plot-errors",
        ] {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id}");
        }
        assert_eq!(html.matches("<details>").count(), 5);
        assert!(html.contains(r#"id="total-requests-create_order">2025000<"#));
        assert!(html.contains(r#"id="total-outcome-429">108000<"#));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(0.3, 5.0), 0.1);
    }
}
