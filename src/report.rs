//! The end-of-run report: Markdown for people, JSON for machines, next to
//! the state database (`<db>.report.md` / `<db>.report.json`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::status::RunStatus;

/// How long one stage took.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    pub rows: u64,
    pub seconds: f64,
}

/// Everything the report says.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: RunStatus,
    /// `completed`, `interrupted` or `stopped: <why>`.
    pub outcome: String,
    pub stages: Vec<StageTiming>,
    /// Requests sent per input row (all runs of this input).
    pub requests_per_row: f64,
    /// The command that resumes this run (the one that was given).
    pub resume_command: String,
    /// The command that retries failed rows, when there are any.
    pub retry_command: Option<String>,
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The report paths for `db`, or for an explicit Markdown path.
pub fn paths(db: &Path, explicit: Option<&Path>) -> (PathBuf, PathBuf) {
    let md = explicit.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut p = db.as_os_str().to_owned();
        p.push(".report.md");
        PathBuf::from(p)
    });
    let json = md.with_extension("json");
    (md, json)
}

/// Renders the Markdown report.
pub fn markdown(report: &Report) -> String {
    let s = &report.status;
    let mut md = format!(
        "# orderbatch run {} — {}\n\n\
         | | |\n|---|---|\n\
         | command | `{}` |\n| input | `{}` |\n| fingerprint | `{}` |\n\
         | started | {} |\n| finished | {} |\n| rows | {} |\n\
         | requests per row | {:.2} |\n| rows/s | {:.1} |\n| requests/s | {:.1} |\n\n",
        s.run_id,
        report.outcome,
        s.command,
        s.input,
        s.fingerprint,
        s.started_at,
        s.finished_at.as_deref().unwrap_or("—"),
        s.total,
        report.requests_per_row,
        s.rows_per_second,
        s.requests_per_second,
    );
    md.push_str("## Rows by state\n\n| state | rows |\n|---|---:|\n");
    for (state, n) in &s.states {
        md.push_str(&format!("| {state} | {n} |\n"));
    }
    md.push_str("\n## Requests by endpoint\n\n| endpoint | requests |\n|---|---:|\n");
    for (endpoint, n) in &s.requests {
        md.push_str(&format!("| {endpoint} | {n} |\n"));
    }
    md.push_str("\n## Stages (this invocation)\n\n| stage | rows | seconds |\n|---|---:|---:|\n");
    for t in &report.stages {
        md.push_str(&format!(
            "| {} | {} | {:.2} |\n",
            t.stage, t.rows, t.seconds
        ));
    }
    md.push_str("\n## Errors\n\n");
    if s.errors.is_empty() {
        md.push_str("None.\n");
    } else {
        md.push_str("| code | rows | example |\n|---|---:|---|\n");
        for e in &s.errors {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                e.code,
                e.count,
                e.example.replace('|', "\\|").replace('\n', " ")
            ));
        }
    }
    md.push_str(&format!(
        "\n## Next\n\nResume (safe at any time; finished work is never repeated):\n\n    {}\n",
        report.resume_command
    ));
    if let Some(retry) = &report.retry_command {
        md.push_str(&format!("\nRetry the failed rows:\n\n    {retry}\n"));
    }
    md
}

/// Writes both files (mode 0600), each replacing the earlier one whole.
pub fn write(report: &Report, md_path: &Path, json_path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    for (path, bytes) in [(md_path, markdown(report).into_bytes()), (json_path, json)] {
        let mut file = crate::files::replace_private(path)?;
        file.write_all(&bytes)?;
        file.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("run"), "run");
        assert_eq!(shell_quote("my file.csv"), "'my file.csv'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn report_paths_sit_next_to_the_db() {
        let (md, json) = paths(Path::new("/x/state.db"), None);
        assert_eq!(md, Path::new("/x/state.db.report.md"));
        assert_eq!(json, Path::new("/x/state.db.report.json"));
        let (md, json) = paths(Path::new("s.db"), Some(Path::new("out/r.md")));
        assert_eq!(
            (md.as_path(), json.as_path()),
            (Path::new("out/r.md"), Path::new("out/r.json"))
        );
    }
}
