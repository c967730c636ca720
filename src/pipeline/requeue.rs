//! `orderbatch retry`: what a run needs to be retried, and putting its
//! failed rows back where its command's stages take them.

use std::path::{Path, PathBuf};

use super::{Conflict, PipelineError, RunSpec};
use crate::input::fingerprint::fingerprint;
use crate::store::Store;

/// What `orderbatch retry` resumes: the run's input, and everything the run
/// was started with that its requests need.
#[derive(Debug, Clone)]
pub struct RetryPlan {
    pub run_id: i64,
    pub input: PathBuf,
    /// What the run was started with.
    pub spec: RunSpec,
    /// Failed rows that [`RetryPlan::requeue`] would put back.
    error_code: Option<String>,
}

/// Reads what retrying `run_id` (default: the newest run) of `db` needs,
/// changing nothing: the caller checks its configuration, then
/// [`RetryPlan::requeue`]s.
pub fn prepare_retry(
    db: &Path,
    run_id: Option<i64>,
    error_code: Option<&str>,
) -> Result<RetryPlan, PipelineError> {
    if !db.exists() {
        return Err(Conflict::NoDatabase { db: db.into() }.into());
    }
    let store = Store::open(db)?;
    let run = match run_id {
        Some(id) => store.run(id)?,
        None => store.runs()?.pop(),
    }
    .ok_or_else(|| Conflict::NoSuchRun { db: db.into() })?;
    let recorded = PathBuf::from(&run.input_path);
    let (input, found) = match fingerprint(&recorded) {
        Ok(found) => (recorded, found),
        Err(source) => match archived_input(&recorded, run.id, &run.fingerprint) {
            Some(archived) => (archived, run.fingerprint.clone()),
            None => {
                return Err(Conflict::InputUnreadable {
                    run: run.id,
                    archive: archive_pattern(&recorded, run.id),
                    input: recorded,
                    fingerprint: run.fingerprint,
                    source,
                }
                .into())
            }
        },
    };
    if found != run.fingerprint {
        return Err(Conflict::InputDiffers {
            run: run.id,
            input,
            fingerprint: run.fingerprint,
            found,
        }
        .into());
    }
    let spec = RunSpec::from_stored(&run.options).map_err(|source| Conflict::UnreadableSpec {
        run: run.id,
        db: db.into(),
        source,
    })?;
    Ok(RetryPlan {
        run_id: run.id,
        input,
        spec,
        error_code: error_code.map(str::to_string),
    })
}

/// The names `orderbatch inbox` archives the input `recorded` of run
/// `run_id` under, in its default done folder (`<dir>/done/YYYY-MM-DD/`).
fn archived_names(recorded: &Path, run_id: i64) -> Option<(PathBuf, [String; 2])> {
    let name = recorded.file_name()?.to_str()?;
    let done = recorded.parent()?.join("done");
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    Some((
        done,
        [name.to_string(), format!("{stem}.run-{run_id}{ext}")],
    ))
}

fn archive_pattern(recorded: &Path, run_id: i64) -> String {
    match archived_names(recorded, run_id) {
        Some((done, [name, other])) => format!("{}/*/{{{name},{other}}}", done.display()),
        None => "the inbox's done folder".to_string(),
    }
}

/// A run whose input an inbox archived before it recorded where (an
/// older version, or a pass cut short): the file of that content in the
/// default done folder, newest day first.
fn archived_input(recorded: &Path, run_id: i64, fp: &str) -> Option<PathBuf> {
    let (done, names) = archived_names(recorded, run_id)?;
    let mut days: Vec<PathBuf> = std::fs::read_dir(done)
        .ok()?
        .flatten()
        .map(|d| d.path())
        .collect();
    days.sort();
    days.iter()
        .rev()
        .flat_map(|day| names.iter().map(move |n| day.join(n)))
        .find(|path| fingerprint(path).is_ok_and(|found| found == fp))
}

impl RetryPlan {
    /// Puts the failed rows back into the state their command's stages
    /// take; returns how many.
    pub fn requeue(&self, db: &Path) -> Result<u64, PipelineError> {
        let store = Store::open(db)?;
        Ok(store.requeue_failed(
            self.run_id,
            self.error_code.as_deref(),
            &self.spec.mode.requeue(),
        )?)
    }
}
