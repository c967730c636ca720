//! `orderbatch inbox`: every ready file of a drop folder through `run` or
//! `refresh`, each exactly once by content, then archived.
//!
//! A pass takes the ready files oldest first, one after another, within one
//! rate budget ([`Pace`]). For each file, in this order, each step safe to
//! cut short and do again:
//!
//! 1. its content fingerprint is looked up in the state database: a
//!    finished run of the same content is not run again (its own file is
//!    archived; another file with that content is archived with a note
//!    naming the run); an unfinished one resumes;
//! 2. the run (the same library path as `orderbatch run` / `refresh`);
//! 3. a finished file (every row final: exit 0 or 1) is archived into
//!    `done/YYYY-MM-DD/` (the day, UTC, its run finished): export, rejects
//!    and reports first (derived from the database, rewritten if a pass was
//!    cut short), the marker copied, then the input moved — the move is the
//!    commit — then the marker and the work files removed;
//! 4. a file the run refused (header, quoting, unreadable) goes to
//!    `failed/YYYY-MM-DD/` with `<name>.error.txt` beside it; a stopped,
//!    deferred or interrupted one stays for the next pass.
//!
//! An archive step that fails leaves the file in place, its run finished:
//! the next pass archives it without running it again.

pub mod archive;
pub mod ready;

use std::path::{Path, PathBuf};

use crate::cells::Cells;
use crate::exit::Exit;
use crate::input::fingerprint::Stamp;
use crate::input::rejects::RejectsFile;
use crate::input::InputError;
use crate::pipeline::{
    self, Clients, Pace, PipelineError, RunError, RunOptions, RunSummary, Shutdown, Stop,
};
use crate::report::{self, Report};
use crate::store::runs::RunRecord;
use crate::store::{RowState, Store, StoreError};
use archive::{move_file, same_content, split_name, MoveError};
pub use ready::{Candidate, Ready};

/// What went wrong with the inbox itself (not one of its files).
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("cannot read the inbox {dir}", dir = dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where files come from and go, and how each is run.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub dir: PathBuf,
    pub pattern: String,
    pub ready: Ready,
    pub done: PathBuf,
    pub failed: PathBuf,
    /// Work files (rejects until archived); beside the database.
    pub work: PathBuf,
    /// The options of each file's run; `input` and `rejects` are set per file.
    pub options: RunOptions,
    pub cells: Cells,
    pub rejects_include_pii: bool,
    /// The command line, for the reports' resume line.
    pub command_line: String,
}

/// What happened to one file in a pass.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub name: String,
    /// Its exit code, as `run` or `refresh` would have given it (5 when
    /// its archive step failed after its run).
    pub code: Exit,
    /// One line: what was done, and where the file is now.
    pub line: String,
    /// Requests sent for it in this pass.
    pub requests: u64,
}

/// One pass over the folder.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub files: Vec<FileOutcome>,
    /// Files left for later, with why.
    pub waiting: Vec<(String, String)>,
}

impl Pass {
    /// The worst of the files' outcomes (done when there were none).
    pub fn code(&self) -> Exit {
        self.files.iter().fold(Exit::Done, |w, f| w.worst(f.code))
    }
}

/// What a dry run would do with a file.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub action: String,
}

impl Inbox {
    fn command(&self) -> &'static str {
        self.options.spec.mode.command()
    }

    fn candidates(&self) -> Result<Vec<Candidate>, InboxError> {
        ready::scan(&self.dir, &self.pattern, &self.ready).map_err(|source| InboxError::Dir {
            dir: self.dir.clone(),
            source,
        })
    }

    /// What a pass would take, skip (and why) and archive; reads the
    /// database only when it exists, and changes nothing.
    pub fn plan(&self) -> Result<Vec<Planned>, InboxError> {
        let db = &self.options.db;
        let store = if std::fs::metadata(db).is_ok_and(|m| m.len() > 0) {
            Some(Store::open_reader(db)?)
        } else {
            None
        };
        let mut out = Vec::new();
        for c in self.candidates()? {
            let action = match (&c.skip, fingerprint(&c.path)) {
                (Some(why), _) => format!("skip: {why}"),
                (None, Err(e)) => {
                    format!("refuse: cannot read it ({e}) → {}", self.failed.display())
                }
                (None, Ok(fp)) => match store
                    .as_ref()
                    .map(|s| s.find_run(self.command(), &fp))
                    .transpose()?
                    .flatten()
                {
                    Some(run) if run.finished_at.is_some() && self.is_own(&run, &c.path) => {
                        format!(
                            "archive: run {} finished it → {}",
                            run.id,
                            self.done.display()
                        )
                    }
                    Some(run) if run.finished_at.is_some() => format!(
                        "archive without running: same content as run {} ({}) → {}",
                        run.id,
                        run.input_path,
                        self.done.display()
                    ),
                    Some(run) => format!("resume run {}", run.id),
                    None => format!("take: {} it", self.command()),
                },
            };
            out.push(Planned {
                name: c.name,
                action,
            });
        }
        Ok(out)
    }

    /// One pass: every ready file, oldest first, until the folder has no
    /// more or a stop is asked for (`shutdown`) or a run was stopped (the
    /// credentials, the clock, --max-errors, the provider down: the next
    /// files would meet the same).
    pub async fn pass(
        &self,
        clients: &Clients,
        pace: &Pace,
        shutdown: &Shutdown,
    ) -> Result<Pass, InboxError> {
        let mut pass = Pass::default();
        for c in self.candidates()? {
            if let Some(why) = &c.skip {
                pass.waiting.push((c.name.clone(), why.clone()));
                continue;
            }
            if shutdown.is_stopping() {
                pass.waiting
                    .push((c.name.clone(), "the inbox is stopping".to_string()));
                continue;
            }
            if c.stamp.is_none() || Stamp::of(&c.path).ok() != c.stamp {
                pass.waiting
                    .push((c.name.clone(), "changed since it was found ready".into()));
                continue;
            }
            let outcome = self.one(&c, clients, pace, shutdown).await?;
            let stop = outcome.code == Exit::Stopped;
            pass.files.push(outcome);
            if stop {
                break;
            }
        }
        Ok(pass)
    }

    /// Whether `run` was this very file's (not another file's of the same
    /// content).
    fn is_own(&self, run: &RunRecord, path: &Path) -> bool {
        let here = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Path::new(&run.input_path) == here
    }

    async fn one(
        &self,
        c: &Candidate,
        clients: &Clients,
        pace: &Pace,
        shutdown: &Shutdown,
    ) -> Result<FileOutcome, InboxError> {
        let outcome = |code: Exit, line: String| FileOutcome {
            name: c.name.clone(),
            code,
            line,
            requests: 0,
        };
        let fp = match fingerprint(&c.path) {
            Ok(fp) => fp,
            Err(e) => {
                let why = format!("cannot read it: {e}");
                return Ok(self.refuse(c, None, &why));
            }
        };
        let store = Store::open(&self.options.db)?;
        if let Some(run) = store.find_run(self.command(), &fp)? {
            if run.finished_at.is_some() {
                let own = self.is_own(&run, &c.path);
                let note = (!own).then(|| {
                    format!(
                        "{}: same content (sha256 {fp}) as run {} of {}, finished {}: not run again\n",
                        c.name,
                        run.id,
                        run.input_path,
                        run.finished_at.as_deref().unwrap_or_default()
                    )
                });
                let code = if own {
                    finished_code(&store, &run)?
                } else {
                    Exit::Done
                };
                drop(store);
                let what = if own {
                    format!("run {} had finished it", run.id)
                } else {
                    format!(
                        "same content as run {} ({}): not run again",
                        run.id, run.input_path
                    )
                };
                return Ok(match self.archive(c, &run, &fp, note.as_deref(), None) {
                    Ok(to) => outcome(code, format!("{what} → {}", to.display())),
                    Err(e) => outcome(
                        Exit::FailedAfterSend,
                        format!("{what}, but it is not archived: {e}; retried next pass"),
                    ),
                });
            }
        }
        drop(store);

        let mut options = self.options.clone();
        options.input = c.path.clone();
        options.rejects = Some(RejectsFile {
            path: self.rejects_work(&fp),
            include_pii: self.rejects_include_pii,
            cells: self.cells,
        });
        if let Err(e) = std::fs::create_dir_all(&self.work) {
            return Ok(outcome(
                Exit::Usage,
                format!("cannot create {}: {e}; stays", self.work.display()),
            ));
        }
        // Its own stop signal, following the inbox's: an abort of this run
        // (--max-errors) is this file's, not the next one's.
        let own = Shutdown::new();
        let follow = {
            let (inbox, own) = (shutdown.clone(), own.clone());
            tokio::spawn(async move {
                inbox.stopped().await;
                own.stop(inbox.state());
            })
        };
        let result = pipeline::run_paced(&options, clients.clone(), own, pace).await;
        follow.abort();
        let summary = match result {
            Ok(summary) => summary,
            Err(RunError {
                error: PipelineError::Input(e),
                ..
            }) if refused(&e, &c.path) => {
                return Ok(self.refuse(c, Some(&fp), &e.to_string()));
            }
            Err(e) => {
                let sent = e.requests_sent && !e.input_changed();
                return Ok(outcome(
                    if sent {
                        Exit::FailedAfterSend
                    } else {
                        Exit::Usage
                    },
                    format!("error: {e}; stays for the next pass"),
                ));
            }
        };
        let code = summary.exit();
        let mut done = outcome(code, String::new());
        done.requests = summary.request_total();
        let counts = counts(&summary);
        if !matches!(code, Exit::Done | Exit::RowsLeft) {
            done.line = format!(
                "run {}: {} ({counts}); stays for the next pass",
                summary.run_id,
                stop_text(&summary)
            );
            return Ok(done);
        }
        let run = Store::open_reader(&self.options.db)?
            .run(summary.run_id)?
            .ok_or_else(|| StoreError::NoRun {
                path: self.options.db.clone(),
                run: summary.run_id,
            })?;
        done.line = match self.archive(c, &run, &fp, None, Some(&summary)) {
            Ok(to) => format!("run {}: {counts} → {}", run.id, to.display()),
            Err(e) => {
                done.code = Exit::FailedAfterSend;
                format!(
                    "run {}: {counts}, but it is not archived: {e}; retried next pass (not run again)",
                    run.id
                )
            }
        };
        Ok(done)
    }

    fn rejects_work(&self, fp: &str) -> PathBuf {
        self.work
            .join(format!("{}.rejects.csv", &fp[..16.min(fp.len())]))
    }

    /// Moves a finished file and what its run produced into the done folder.
    /// Returns where the file went.
    fn archive(
        &self,
        c: &Candidate,
        run: &RunRecord,
        fp: &str,
        note: Option<&str>,
        summary: Option<&RunSummary>,
    ) -> Result<PathBuf, String> {
        // A duplicate goes under today; a run's own file under the day it
        // finished (the same on every retry of an archive cut short).
        let day = match note {
            Some(_) => today(),
            None => run
                .finished_at
                .as_deref()
                .and_then(|t| t.get(..10))
                .map_or_else(today, str::to_string),
        };
        let dir = self.done.join(day);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let (stem, ext) = split_name(&c.name);
        let qualified = format!("{stem}.run-{}{ext}", run.id);
        let name = [c.name.as_str(), qualified.as_str()]
            .into_iter()
            .find(|n| {
                let to = dir.join(n);
                !to.exists() || same_content(&c.path, &to).unwrap_or(false)
            })
            .ok_or_else(|| {
                MoveError::TargetExists {
                    file: c.path.clone(),
                    target: dir.join(&qualified),
                }
                .to_string()
            })?;
        let (base, _) = split_name(name);
        let out = |suffix: &str| dir.join(format!("{base}{suffix}"));
        match note {
            Some(note) => write_file(&out(".note.txt"), note.as_bytes())?,
            None => {
                let store = Store::open_reader(&self.options.db).map_err(|e| e.to_string())?;
                crate::export::export(&store, run.id, &out(".export.csv"), self.cells)
                    .map_err(|e| e.to_string())?;
                self.write_report(&store, run, summary, &out(".report.md"))
                    .map_err(|e| e.to_string())?;
                let rejects = self.rejects_work(fp);
                if rejects.exists() {
                    let to = out(".rejects.csv");
                    let _ = std::fs::remove_file(&to);
                    move_file(&rejects, &to).map_err(|e| e.to_string())?;
                }
            }
        }
        if let (Some(marker), Ready::Marker(suffix)) = (&c.marker, &self.ready) {
            std::fs::copy(marker, dir.join(format!("{name}{suffix}")))
                .map_err(|e| format!("cannot copy {}: {e}", marker.display()))?;
        }
        let to = dir.join(name);
        move_file(&c.path, &to).map_err(|e| e.to_string())?;
        if let Some(marker) = &c.marker {
            let _ = std::fs::remove_file(marker);
        }
        let _ = std::fs::remove_file(self.rejects_work(fp));
        Ok(to)
    }

    fn write_report(
        &self,
        store: &Store,
        run: &RunRecord,
        summary: Option<&RunSummary>,
        md: &Path,
    ) -> Result<(), PipelineError> {
        let status = crate::status::run_status(store, run)?;
        let requests: u64 = store.request_counts(run.id)?.iter().map(|(_, n)| n).sum();
        let report = Report {
            outcome: "completed".to_string(),
            requests_per_row: requests as f64 / run.total_rows.max(1) as f64,
            stages: summary.map(|s| s.stages.clone()).unwrap_or_default(),
            resume_command: self.command_line.clone(),
            // `orderbatch retry` re-reads the input where the run read it;
            // the file has moved into the archive.
            retry_command: None,
            status,
        };
        report::write(&report, md, &md.with_extension("json")).map_err(|source| {
            PipelineError::Input(InputError::Io {
                path: md.to_path_buf(),
                source,
            })
        })
    }

    /// Moves a file the run refused into the failed folder, the error beside it.
    fn refuse(&self, c: &Candidate, fp: Option<&str>, why: &str) -> FileOutcome {
        let dir = self.failed.join(today());
        let moved = (|| {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let (stem, ext) = split_name(&c.name);
            let tag = fp.map_or_else(
                || chrono::Utc::now().format("%H%M%S").to_string(),
                |f| f[..8.min(f.len())].to_string(),
            );
            let other = format!("{stem}.{tag}{ext}");
            let name = [c.name.as_str(), other.as_str()]
                .into_iter()
                .find(|n| {
                    let to = dir.join(n);
                    !to.exists() || same_content(&c.path, &to).unwrap_or(false)
                })
                .unwrap_or(other.as_str())
                .to_string();
            write_file(
                &dir.join(format!("{name}.error.txt")),
                format!("{why}\n").as_bytes(),
            )?;
            if let (Some(marker), Ready::Marker(suffix)) = (&c.marker, &self.ready) {
                let _ = std::fs::copy(marker, dir.join(format!("{name}{suffix}")));
            }
            let to = dir.join(&name);
            move_file(&c.path, &to).map_err(|e| e.to_string())?;
            if let Some(marker) = &c.marker {
                let _ = std::fs::remove_file(marker);
            }
            Ok::<_, String>(to)
        })();
        FileOutcome {
            name: c.name.clone(),
            code: Exit::Usage,
            line: match moved {
                Ok(to) => format!("refused: {why} → {}", to.display()),
                Err(e) => format!("refused: {why}; it stays ({e})"),
            },
            requests: 0,
        }
    }
}

/// Whether an input error refuses the file itself (rather than an output
/// beside it, such as the rejects file, failing to be written).
fn refused(e: &InputError, input: &Path) -> bool {
    match e {
        InputError::Io { path, .. } => path == input,
        _ => true,
    }
}

fn fingerprint(path: &Path) -> std::io::Result<String> {
    crate::input::fingerprint::fingerprint(path)
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = crate::files::replace_private(path).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.commit().map_err(fail)
}

/// Done when every row of a finished run is done or skipped, else rows left.
fn finished_code(store: &Store, run: &RunRecord) -> Result<Exit, StoreError> {
    let states = store.state_counts(run.id)?;
    let ok = states
        .iter()
        .all(|(s, n)| *n == 0 || matches!(s, RowState::Done | RowState::Skipped));
    Ok(if ok { Exit::Done } else { Exit::RowsLeft })
}

fn counts(summary: &RunSummary) -> String {
    let states: Vec<String> = summary
        .states
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    format!(
        "{} rows{}{}, {} requests",
        summary.total,
        if states.is_empty() { "" } else { ": " },
        states.join(", "),
        summary.request_total()
    )
}

fn stop_text(summary: &RunSummary) -> String {
    match &summary.stop {
        Stop::Interrupted(signal) => format!("interrupted ({})", signal.name()),
        Stop::Aborted(why) => format!("stopped: {why}"),
        Stop::Running if summary.deferred_until.is_some() => "rows deferred".to_string(),
        Stop::Running => "unfinished".to_string(),
    }
}
