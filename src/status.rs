//! `orderbatch status` and `orderbatch runs`: what a state database says
//! about its runs, readable while a run is going on in another process.
//!
//! The JSON form is a stable contract: `{"runs":[{"run_id", "command",
//! "input", "total", "states":{state: count}, "requests":{endpoint: count},
//! "errors":[{"code","count","example"}], "started_at", "finished_at"}]}`,
//! plus the informational fields below. Fields are only ever added.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::{RowState, RunRecord, Store, StoreError};

/// Error codes listed per run.
pub const TOP_ERRORS: usize = 10;

/// One error code of a run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorCount {
    pub code: String,
    pub count: u64,
    pub example: String,
}

/// The state of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run_id: i64,
    pub command: String,
    pub input: String,
    pub fingerprint: String,
    pub total: u64,
    pub states: BTreeMap<String, u64>,
    pub requests: BTreeMap<String, u64>,
    pub errors: Vec<ErrorCount>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Seconds from start to finish (or to now while running).
    pub elapsed_seconds: f64,
    /// Rows finished (done, failed, rejected) per second.
    pub rows_per_second: f64,
    pub requests_per_second: f64,
    /// Estimated seconds to go while the run is unfinished.
    pub eta_seconds: Option<f64>,
}

fn seconds_between(start: &str, end: Option<&str>) -> f64 {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    let end = end
        .and_then(parse)
        .map(|e| e.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    parse(start)
        .map(|s| (end - s.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0)
        .max(0.0)
}

/// The status of `run`.
pub fn run_status(store: &Store, run: &RunRecord) -> Result<RunStatus, StoreError> {
    let counts = store.state_counts(run.id)?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let finished_rows: u64 = counts
        .iter()
        .filter(|(s, _)| s.is_final())
        .map(|(_, n)| n)
        .sum();
    let requests: BTreeMap<String, u64> = store.request_counts(run.id)?.into_iter().collect();
    let request_total: u64 = requests.values().sum();
    let elapsed = seconds_between(&run.started_at, run.finished_at.as_deref());
    let rows_per_second = if elapsed > 0.0 {
        finished_rows as f64 / elapsed
    } else {
        0.0
    };
    let remaining = total - finished_rows;
    let eta_seconds = (run.finished_at.is_none() && remaining > 0 && rows_per_second > 0.0)
        .then(|| remaining as f64 / rows_per_second);
    Ok(RunStatus {
        run_id: run.id,
        command: run.command.clone(),
        input: run.input_path.clone(),
        fingerprint: run.fingerprint.clone(),
        total,
        states: counts
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect(),
        requests,
        errors: store
            .error_summary(run.id, TOP_ERRORS)?
            .into_iter()
            .map(|(code, count, example)| ErrorCount {
                code,
                count,
                example,
            })
            .collect(),
        started_at: run.started_at.clone(),
        finished_at: run.finished_at.clone(),
        elapsed_seconds: elapsed,
        rows_per_second,
        requests_per_second: if elapsed > 0.0 {
            request_total as f64 / elapsed
        } else {
            0.0
        },
        eta_seconds,
    })
}

/// Every run in the database, oldest first.
pub fn all(store: &Store) -> Result<Vec<RunStatus>, StoreError> {
    store.runs()?.iter().map(|r| run_status(store, r)).collect()
}

/// The JSON document of `status --json`.
pub fn to_json(runs: &[RunStatus]) -> serde_json::Value {
    serde_json::json!({ "runs": runs })
}

/// The run's current figures in one line: the top line of `status` and of
/// the HTML report, e.g. `run 3 (run): 986 of 1000 rows final (972 done, 14
/// unknown); 12.3 rows/s, 45.6 requests/s over 81 s; finished
/// 2026-01-02T03:04:05Z`.
pub fn headline(run: &RunStatus) -> String {
    let count = |s: RowState| run.states.get(s.as_str()).copied().unwrap_or(0);
    let finals: Vec<RowState> = RowState::ALL.into_iter().filter(|s| s.is_final()).collect();
    let final_rows: u64 = finals.iter().map(|s| count(*s)).sum();
    let parts: Vec<String> = finals
        .iter()
        .filter(|s| count(**s) > 0)
        .map(|s| format!("{} {}", count(*s), s.as_str()))
        .collect();
    let mut line = format!(
        "run {} ({}): {} of {} rows final",
        run.run_id, run.command, final_rows, run.total
    );
    if !parts.is_empty() {
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    line.push_str(&format!(
        "; {:.1} rows/s, {:.1} requests/s over {:.0} s; ",
        run.rows_per_second, run.requests_per_second, run.elapsed_seconds
    ));
    match (&run.finished_at, run.eta_seconds) {
        (Some(f), _) => line.push_str(&format!("finished {f}")),
        (None, Some(eta)) => line.push_str(&format!("not finished, about {eta:.0} s to go")),
        (None, None) => line.push_str("not finished"),
    }
    line
}

/// Human-readable status of one run.
pub fn render(run: &RunStatus) -> String {
    let mut out = format!(
        "run {} ({}) of {}\n  fingerprint {}\n  started {}, {}\n",
        run.run_id,
        run.command,
        run.input,
        run.fingerprint,
        run.started_at,
        match &run.finished_at {
            Some(f) => format!("finished {f}"),
            None => "not finished".to_string(),
        }
    );
    out.push_str(&format!("  {}\n", headline(run)));
    out.push_str(&format!("  {:<26} {:>10}\n", "state", "rows"));
    for state in RowState::ALL {
        if let Some(n) = run.states.get(state.as_str()) {
            out.push_str(&format!("  {:<26} {:>10}\n", state.as_str(), n));
        }
    }
    out.push_str(&format!("  {:<26} {:>10}\n", "total", run.total));
    if !run.requests.is_empty() {
        out.push_str(&format!("  {:<26} {:>10}\n", "endpoint", "requests"));
        for (endpoint, n) in &run.requests {
            out.push_str(&format!("  {endpoint:<26} {n:>10}\n"));
        }
    }
    out.push_str(&format!(
        "  {:.1} rows/s, {:.1} requests/s over {:.0}s",
        run.rows_per_second, run.requests_per_second, run.elapsed_seconds
    ));
    if let Some(eta) = run.eta_seconds {
        out.push_str(&format!(", about {eta:.0}s to go"));
    }
    out.push('\n');
    if !run.errors.is_empty() {
        out.push_str("  top errors:\n");
        for e in &run.errors {
            out.push_str(&format!(
                "    {:<32} {:>8}  e.g. {}\n",
                e.code, e.count, e.example
            ));
        }
    }
    out
}
