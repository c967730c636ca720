//! `orderbatch retry`: what a run needs to be retried, and putting its
//! failed rows back where its command's stages take them.

use std::path::{Path, PathBuf};

use super::{PipelineError, RunSpec};
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
        return Err(PipelineError::Conflict(format!(
            "state database {} does not exist",
            db.display()
        )));
    }
    let store = Store::open(db)?;
    let run = match run_id {
        Some(id) => store.run(id)?,
        None => store.runs()?.pop(),
    }
    .ok_or_else(|| PipelineError::Conflict(format!("{} holds no such run", db.display())))?;
    let input = PathBuf::from(&run.input_path);
    let found = fingerprint(&input).map_err(|e| {
        PipelineError::Conflict(format!(
            "run {} needs its input file {} (fingerprint {}), which cannot be read: {e}",
            run.id,
            input.display(),
            run.fingerprint
        ))
    })?;
    if found != run.fingerprint {
        return Err(PipelineError::Conflict(format!(
            "{} has changed since run {} read it: expected fingerprint {}, found {found}. \
             Restore the original file to retry this run",
            input.display(),
            run.id,
            run.fingerprint
        )));
    }
    let spec = RunSpec::from_stored(&run.options).map_err(|e| {
        PipelineError::Conflict(format!(
            "run {} in {} has options this version cannot read ({e}); \
             run its command again instead of retry",
            run.id,
            db.display()
        ))
    })?;
    Ok(RetryPlan {
        run_id: run.id,
        input,
        spec,
        error_code: error_code.map(str::to_string),
    })
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
