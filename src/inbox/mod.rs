//! `orderbatch inbox`: every ready file of a drop folder through `run` or
//! `refresh`, each exactly once by content, then archived.
//!
//! A pass takes the ready files oldest first, within one budget ([`Pace`]:
//! the rate, the request slots, the 429 gate and the customers in flight
//! are shared by its files). For each file, in this order, each step safe
//! to cut short and do again:
//!
//! 1. its content fingerprint is looked up in the state database: a
//!    finished run of the same content is not run again (its own file is
//!    archived; another file with that content is archived with a note
//!    naming the run); an unfinished one resumes;
//! 2. the run (the same library path as `orderbatch run` / `refresh`), in
//!    two halves: registering the file ([`pipeline::prepare`]), done while
//!    the file before it still sends, then sending
//!    ([`pipeline::Prepared::execute`]), started as soon as every customer
//!    of the file before it has been handed out, so the budget carries
//!    across the boundary (a customer in both files goes through the
//!    earlier file's chain first);
//! 3. a finished file (every row final: exit 0 or 1) is archived into
//!    `done/YYYY-MM-DD/` (the day, UTC, its run finished), files in the
//!    order they were taken: export, rejects and reports first (derived from
//!    the database, rewritten if a pass was cut short), the marker copied,
//!    the archived path recorded as the run's input (where `retry` reads
//!    it), then the input moved — the move is the commit — then the marker
//!    and the work files removed;
//! 4. a file the run refused (header, quoting, unreadable) goes to
//!    `failed/YYYY-MM-DD/` with `<name>.error.txt` beside it; a stopped,
//!    deferred or interrupted one stays for the next pass, and a stopped
//!    one stops the files started after it.
//!
//! An archive step that fails leaves the file in place, its run finished:
//! the next pass archives it without running it again. A marker left
//! behind by a pass cut short after its file moved (marker mode) is removed
//! by the next pass, its copy being in the archive.

pub mod archive;
pub mod ready;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cells::Cells;
use crate::exit::Exit;
use crate::input::fingerprint::Stamp;
use crate::input::rejects::RejectsFile;
use crate::input::InputError;
use crate::pipeline::{
    self, Clients, Pace, PipelineError, RunError, RunOptions, RunSummary, Sequence, Shutdown, Stop,
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
    /// Rows its run finished in this pass (0 unless it ran to its end).
    pub rows: u64,
}

/// One pass over the folder.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub files: Vec<FileOutcome>,
    /// Files left for later, with why.
    pub waiting: Vec<(String, String)>,
    /// Leftovers of a pass cut short that this one tidied (orphan markers),
    /// with what was done.
    pub tidied: Vec<(String, String)>,
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

/// A file taken in a pass, in the order taken, and what is left to do
/// with it (done in that order, see [`Inbox::settle`]).
enum Taken {
    /// Nothing: its outcome is known.
    Done(FileOutcome),
    /// Archived without running: a finished run has its content.
    Finished {
        c: Candidate,
        run: RunRecord,
        fp: String,
    },
    /// Moved to the failed folder.
    Refused {
        c: Candidate,
        fp: Option<String>,
        why: String,
    },
    /// Its run sends.
    Running(Running),
}

/// A file whose run was started, as its archiver sees it.
struct Running {
    c: Candidate,
    fp: String,
    task: JoinHandle<Result<RunSummary, RunError>>,
    /// Passes the inbox's stop (and an abort of the file before) on.
    follow: JoinHandle<()>,
}

/// The runs a pass has started, as the files after them see them.
#[derive(Default)]
struct Started {
    /// Their runs (a new run may start beside them).
    runs: Vec<i64>,
    /// Their files' names and own stop signals.
    stops: Vec<(String, Shutdown)>,
    /// Of the run started last: `true` once every customer of it has been
    /// handed out (the next file may start); closed when its run is over.
    last_fed: Option<watch::Receiver<bool>>,
    /// The contents taken so far (fingerprints): a second file of the same
    /// content waits for the next pass, which archives it beside the run
    /// that did it, instead of resuming that run beside itself.
    contents: std::collections::HashSet<String>,
}

impl Started {
    /// Whether a run of the pass stopped on its own (not by the inbox's
    /// signal): `--max-errors`, the provider down, the credentials.
    fn stopped(&self) -> bool {
        self.stops
            .iter()
            .any(|(_, s)| matches!(s.state(), Stop::Aborted(_)))
    }
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
        let mut out: Vec<Planned> = self
            .orphan_markers()
            .into_iter()
            .map(|(marker, copy)| Planned {
                name: file_name(&marker),
                action: format!(
                    "remove: the marker of a file already archived (its copy: {})",
                    copy.display()
                ),
            })
            .collect();
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
                    Some(run) if run.finished_at.is_some() && self.is_own(&run, &c) => {
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
    /// files would meet the same). A file is registered while the one
    /// before it sends, and starts sending once every customer of that one
    /// is handed out; files are archived in the order they were taken, each
    /// as soon as its run is over.
    pub async fn pass(
        &self,
        clients: &Clients,
        pace: &Pace,
        shutdown: &Shutdown,
    ) -> Result<Pass, InboxError> {
        let inbox = Arc::new(self.clone());
        let mut pass = Pass::default();
        if let Ready::Marker(_) = self.ready {
            let tidy = inbox.clone();
            pass.tidied = blocking(move || tidy.tidy_orphan_markers()).await;
        }
        let (taken, queue) = tokio::sync::mpsc::unbounded_channel();
        let archiver = tokio::spawn(Self::finish_in_order(inbox.clone(), queue));
        let mut started = Started::default();
        let mut failure = None;
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
            if started.stopped() {
                break;
            }
            match inbox.take(&c, clients, pace, shutdown, &mut started).await {
                Ok(Some(t)) => {
                    let _ = taken.send(t);
                }
                Ok(None) => {
                    let why = if shutdown.is_stopping() {
                        "the inbox is stopping"
                    } else {
                        "not started: a file before it stopped"
                    };
                    pass.waiting.push((c.name.clone(), why.to_string()));
                    break;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(taken);
        let finished = match archiver.await {
            Ok(finished) => finished,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        if let Some(e) = failure {
            return Err(e);
        }
        pass.files = finished?;
        // Compaction waits for the pass's end: it holds the database.
        let rows: u64 = pass.files.iter().map(|f| f.rows).sum();
        let db = self.options.db.clone();
        if rows > 0 {
            blocking(move || {
                Store::open_reader(&db)
                    .and_then(|store| pipeline::compact(&store, rows))
                    .map_err(|e| tracing::warn!("could not compact the state database: {e}"))
            })
            .await
            .ok();
        }
        Ok(pass)
    }

    /// Finishes the files taken, in the order taken: archives each whose
    /// run is over as soon as it is (and every file before it is done).
    async fn finish_in_order(
        inbox: Arc<Self>,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<Taken>,
    ) -> Result<Vec<FileOutcome>, InboxError> {
        let mut files = Vec::new();
        let mut failure = None;
        while let Some(taken) = queue.recv().await {
            if failure.is_some() {
                // Still waited for: no run is left behind sending.
                if let Taken::Running(r) = taken {
                    r.follow.abort();
                    let _ = r.task.await;
                }
                continue;
            }
            let inbox = inbox.clone();
            let outcome = match taken {
                Taken::Done(outcome) => Ok(outcome),
                Taken::Finished { c, run, fp } => {
                    blocking(move || inbox.archive_finished(&c, &run, &fp)).await
                }
                Taken::Refused { c, fp, why } => {
                    Ok(blocking(move || inbox.refuse(&c, fp.as_deref(), &why)).await)
                }
                Taken::Running(running) => {
                    let Running {
                        c,
                        fp,
                        task,
                        follow,
                        ..
                    } = running;
                    let result = task.await.unwrap_or_else(|e| {
                        Err(RunError {
                            error: PipelineError::Internal {
                                what: "file's run",
                                source: e,
                            },
                            requests_sent: true,
                        })
                    });
                    follow.abort();
                    tracing::debug!(file = %c.name, "file's run over");
                    let name = c.name.clone();
                    let outcome = blocking(move || inbox.ran(&c, &fp, result)).await;
                    tracing::debug!(file = %name, "file archived");
                    outcome
                }
            };
            match outcome {
                Ok(outcome) => files.push(outcome),
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(files), Err)
    }

    /// Whether a run is (own name: the path it had, or where its archive
    /// puts it) this very file's, not another file's of the same content.
    fn is_own(&self, run: &RunRecord, c: &Candidate) -> bool {
        let here = std::fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone());
        let recorded = Path::new(&run.input_path);
        if recorded == here {
            return true;
        }
        // Archived (or about to be: the path is recorded before the move).
        let done = std::fs::canonicalize(&self.done).unwrap_or_else(|_| self.done.clone());
        let (stem, ext) = split_name(&c.name);
        let qualified = format!("{stem}.run-{}{ext}", run.id);
        recorded.parent().and_then(Path::parent) == Some(done.as_path())
            && recorded
                .file_name()
                .is_some_and(|n| n == c.name.as_str() || n == qualified.as_str())
    }

    /// Takes one ready file: what to do with it, its run registered and
    /// started when it has one to run. `None` when it was not started
    /// because a file before it stopped or the inbox is stopping (its run
    /// registered, nothing sent: the next pass resumes it).
    async fn take(
        self: &Arc<Self>,
        c: &Candidate,
        clients: &Clients,
        pace: &Pace,
        shutdown: &Shutdown,
        started: &mut Started,
    ) -> Result<Option<Taken>, InboxError> {
        let outcome = |code: Exit, line: String| {
            Taken::Done(FileOutcome {
                name: c.name.clone(),
                code,
                line,
                requests: 0,
                rows: 0,
            })
        };
        let path = c.path.clone();
        let fp = match blocking(move || fingerprint(&path)).await {
            Ok(fp) => fp,
            Err(e) => {
                return Ok(Some(Taken::Refused {
                    c: c.clone(),
                    fp: None,
                    why: format!("cannot read it: {e}"),
                }))
            }
        };
        if !started.contents.insert(fp.clone()) {
            return Ok(Some(outcome(
                Exit::Done,
                "same content as a file taken before it in this pass: stays, and the next pass \
                 archives it beside that file's run (not run again)"
                    .to_string(),
            )));
        }
        let store = Store::open(&self.options.db)?;
        if let Some(run) = store.find_run(self.command(), &fp)? {
            if run.finished_at.is_some() {
                return Ok(Some(Taken::Finished {
                    c: c.clone(),
                    run,
                    fp,
                }));
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
            return Ok(Some(outcome(
                Exit::Usage,
                format!("cannot create {}: {e}; stays", self.work.display()),
            )));
        }
        // Registered while the files before it send (their runs are this
        // process's own: a new run may start beside them).
        tracing::debug!(file = %c.name, "file registering");
        let prepared = match pipeline::prepare(&options, &started.runs).await {
            Ok(prepared) => {
                tracing::debug!(run_id = prepared.run_id(), file = %c.name, "file registered");
                prepared
            }
            Err(RunError {
                error: PipelineError::Input(e),
                ..
            }) if refused(&e, &c.path) => {
                return Ok(Some(Taken::Refused {
                    c: c.clone(),
                    fp: Some(fp),
                    why: e.to_string(),
                }));
            }
            Err(e) => {
                return Ok(Some(outcome(
                    Exit::Usage,
                    format!("error: {}; stays for the next pass", with_causes(&e.error)),
                )))
            }
        };
        // Starts once every customer of the file before it is handed out.
        if let Some(fed) = &mut started.last_fed {
            tokio::select! {
                _ = fed.wait_for(|fed| *fed) => {}
                () = shutdown.stopped() => {}
            }
        }
        if shutdown.is_stopping() || started.stopped() {
            return Ok(None);
        }
        // Its own stop signal, following the inbox's, and the files' before
        // it when one stops on its own (the next files would meet the
        // same): an abort of this run (--max-errors) is this file's and the
        // later ones', not the earlier ones'.
        let own = Shutdown::new();
        let follow = {
            let (inbox, own) = (shutdown.clone(), own.clone());
            let before = started.stops.clone();
            tokio::spawn(async move {
                let aborted = before.iter().map(|(name, stop)| {
                    Box::pin(async move {
                        stop.stopped().await;
                        match stop.state() {
                            Stop::Aborted(why) => format!("{name}, before it, stopped: {why}"),
                            _ => std::future::pending().await,
                        }
                    })
                });
                let aborted = async {
                    if before.is_empty() {
                        std::future::pending().await
                    } else {
                        futures_util::future::select_all(aborted).await.0
                    }
                };
                tokio::select! {
                    () = inbox.stopped() => own.stop(inbox.state()),
                    why = aborted => own.stop(Stop::Aborted(why)),
                }
            })
        };
        let (fed, fed_rx) = watch::channel(false);
        let run_id = prepared.run_id();
        let task = {
            let (clients, own, pace) = (clients.clone(), own.clone(), pace.clone());
            tokio::spawn(async move {
                let sequence = Sequence {
                    fed: Some(fed),
                    compact: false,
                };
                prepared.execute(clients, own, &pace, sequence).await
            })
        };
        tracing::debug!(run_id, file = %c.name, "file started");
        started.runs.push(run_id);
        started.stops.push((c.name.clone(), own.clone()));
        started.last_fed = Some(fed_rx);
        Ok(Some(Taken::Running(Running {
            c: c.clone(),
            fp,
            task,
            follow,
        })))
    }

    /// A file whose content a finished run has: archived, not run again.
    fn archive_finished(
        &self,
        c: &Candidate,
        run: &RunRecord,
        fp: &str,
    ) -> Result<FileOutcome, InboxError> {
        let store = Store::open_reader(&self.options.db)?;
        let own = self.is_own(run, c);
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
            finished_code(&store, run)?
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
        let outcome = |code: Exit, line: String| FileOutcome {
            name: c.name.clone(),
            code,
            line,
            requests: 0,
            rows: 0,
        };
        Ok(match self.archive(c, run, fp, note.as_deref(), None) {
            Ok(to) => outcome(code, format!("{what} → {}", to.display())),
            Err(e) => outcome(
                Exit::FailedAfterSend,
                format!("{what}, but it is not archived: {e}; retried next pass"),
            ),
        })
    }

    /// A file whose run is over: archived when it finished, else it stays.
    fn ran(
        &self,
        c: &Candidate,
        fp: &str,
        result: Result<RunSummary, RunError>,
    ) -> Result<FileOutcome, InboxError> {
        let mut done = FileOutcome {
            name: c.name.clone(),
            code: Exit::Done,
            line: String::new(),
            requests: 0,
            rows: 0,
        };
        let summary = match result {
            Ok(summary) => summary,
            Err(RunError {
                error: PipelineError::Input(e),
                ..
            }) if refused(&e, &c.path) => {
                return Ok(self.refuse(c, Some(fp), &e.to_string()));
            }
            Err(e) => {
                let sent = e.requests_sent && !e.input_changed();
                done.code = if sent {
                    Exit::FailedAfterSend
                } else {
                    Exit::Usage
                };
                done.line = format!("error: {}; stays for the next pass", with_causes(&e.error));
                return Ok(done);
            }
        };
        done.code = summary.exit();
        done.requests = summary.request_total();
        let counts = counts(&summary);
        if !matches!(done.code, Exit::Done | Exit::RowsLeft) {
            done.line = format!(
                "run {}: {} ({counts}); stays for the next pass",
                summary.run_id,
                stop_text(&summary)
            );
            return Ok(done);
        }
        done.rows = summary.total;
        // The file may have been replaced (or rewritten) under its name while
        // it ran: what is there now was not run, and stays for the next pass
        // as a new file.
        if fingerprint(&c.path).ok().as_deref() != Some(fp) {
            done.line = format!(
                "run {}: {counts}; the file changed while it ran (another upload under its \
                 name?): what is there now stays for the next pass as a new file",
                summary.run_id
            );
            return Ok(done);
        }
        let run = Store::open_reader(&self.options.db)?
            .run(summary.run_id)?
            .ok_or_else(|| StoreError::NoRun {
                path: self.options.db.clone(),
                run: summary.run_id,
            })?;
        done.line = match self.archive(c, &run, fp, None, Some(&summary)) {
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

    /// Markers (marker mode) whose file is gone from the folder and was
    /// archived with a copy of them (a pass cut short between moving the
    /// file and removing its marker), each with that copy. A marker newer
    /// than the copy is a new upload's, and is left alone.
    fn orphan_markers(&self) -> Vec<(PathBuf, PathBuf)> {
        let Ready::Marker(suffix) = &self.ready else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(file) = name.strip_suffix(suffix.as_str()) else {
                continue;
            };
            if file.is_empty() || !ready::glob(&self.pattern, file) {
                continue;
            }
            let marker = entry.path();
            if self.dir.join(file).exists() || !marker.is_file() {
                continue;
            }
            let Ok(modified) = std::fs::metadata(&marker).and_then(|m| m.modified()) else {
                continue;
            };
            if let Some(copy) = self.archived_marker(file, suffix, modified) {
                found.push((marker, copy));
            }
        }
        found.sort();
        found
    }

    /// The archive's copy of the marker of `file` (under done/ or failed/,
    /// beside the archived file, under its name or the name the archive
    /// gives a second file of that name) made at or after `modified`.
    fn archived_marker(&self, file: &str, suffix: &str, modified: SystemTime) -> Option<PathBuf> {
        let (stem, ext) = split_name(file);
        let prefix = format!("{stem}.");
        let names = |n: &str| {
            n == file
                || (n.starts_with(&prefix)
                    && n.ends_with(ext)
                    && n.len() > prefix.len() + ext.len())
        };
        let mut best: Option<(SystemTime, PathBuf)> = None;
        for root in [&self.done, &self.failed] {
            let Ok(days) = std::fs::read_dir(root) else {
                continue;
            };
            for day in days.flatten() {
                let Ok(files) = std::fs::read_dir(day.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let Ok(n) = f.file_name().into_string() else {
                        continue;
                    };
                    let Some(archived) = n.strip_suffix(suffix) else {
                        continue;
                    };
                    if !names(archived) || !day.path().join(archived).is_file() {
                        continue;
                    }
                    let Ok(at) = f.metadata().and_then(|m| m.modified()) else {
                        continue;
                    };
                    if at >= modified && best.as_ref().is_none_or(|(b, _)| at > *b) {
                        best = Some((at, f.path()));
                    }
                }
            }
        }
        best.map(|(_, path)| path)
    }

    /// Removes orphan markers ([`Inbox::orphan_markers`]); says what was done.
    fn tidy_orphan_markers(&self) -> Vec<(String, String)> {
        self.orphan_markers()
            .into_iter()
            .map(|(marker, copy)| {
                let what = match std::fs::remove_file(&marker) {
                    Ok(()) => format!(
                        "removed: the marker of a file already archived (its copy: {})",
                        copy.display()
                    ),
                    Err(e) => format!("cannot remove this orphan marker: {e}"),
                };
                (file_name(&marker), what)
            })
            .collect()
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
        // What an earlier archive of this file, cut short, left half
        // written (it is written again below).
        archive::remove_leftovers(&dir, &[name, base]);
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
        if note.is_none() {
            // Where `retry` finds the run's input from now on; recorded
            // before the move (the commit), and recognised as this file's
            // own run should the move not happen.
            let at = std::fs::canonicalize(&dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
                .join(name);
            Store::open_reader(&self.options.db)
                .and_then(|store| store.set_input_path(run.id, &at.display().to_string()))
                .map_err(|e| e.to_string())?;
        }
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
            archive::remove_leftovers(&dir, &[&name]);
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
            rows: 0,
        }
    }
}

/// `f` on a blocking thread (file moves, exports, the database).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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

/// An error and its causes on one line (`a: b: c`).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
