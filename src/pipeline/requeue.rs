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
    let input = PathBuf::from(&run.input_path);
    let found = fingerprint(&input).map_err(|source| Conflict::InputUnreadable {
        run: run.id,
        input: input.clone(),
        fingerprint: run.fingerprint.clone(),
        source,
    })?;
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
