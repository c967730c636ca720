//! Where a row is, and how `retry` puts failed rows back.

use rusqlite::params;

use crate::store::counts::{read_state, Moves};
use crate::store::{Store, StoreError};

/// Where a row is. `creating` is written before the create request leaves,
/// so a row found in it has an unknown outcome and is reconciled first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RowState {
    #[default]
    Pending,
    Creating,
    /// A change request is about to leave (or may have); reconciled on resume.
    Changing,
    /// A retry-payment request is about to leave (or may have); checked on resume.
    Retrying,
    /// Waiting for its retry window (`next_attempt_at`).
    Deferred,
    /// Nothing to do (e.g. already paid); the reason is in the error columns.
    Skipped,
    Created,
    UrlsRefreshed,
    Done,
    Failed,
    Rejected,
    /// Whether the row's request took effect cannot be told from the
    /// provider's answers: left for an operator (the error says what to check).
    Unknown,
}

impl RowState {
    pub const ALL: [RowState; 12] = [
        RowState::Pending,
        RowState::Creating,
        RowState::Changing,
        RowState::Retrying,
        RowState::Deferred,
        RowState::Skipped,
        RowState::Created,
        RowState::UrlsRefreshed,
        RowState::Done,
        RowState::Failed,
        RowState::Rejected,
        RowState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Creating => "creating",
            RowState::Changing => "changing",
            RowState::Retrying => "retrying",
            RowState::Deferred => "deferred",
            RowState::Skipped => "skipped",
            RowState::Created => "created",
            RowState::UrlsRefreshed => "urls_refreshed",
            RowState::Done => "done",
            RowState::Failed => "failed",
            RowState::Rejected => "rejected",
            RowState::Unknown => "unknown",
        }
    }

    /// The state's position in [`RowState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the row needs no more work in this run.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RowState::Done
                | RowState::Failed
                | RowState::Rejected
                | RowState::Skipped
                | RowState::Unknown
        )
    }
}

/// Where [`Store::requeue_failed`] puts a failed row back, by what it holds.
#[derive(Debug, Clone, Copy)]
pub struct Requeue {
    /// A row with no order identifier.
    pub no_order: RowState,
    /// A row with an order but no URL.
    pub order: RowState,
    /// A row with an order and its URL.
    pub urls: RowState,
    /// A row with a failed attempt at this endpoint goes to this state
    /// whatever it holds (its request may have been acted on).
    pub attempted: Option<(&'static str, RowState)>,
}

impl Store {
    /// Puts failed rows of `run_id` (only those whose last error is
    /// `error_code`, when given) back to the state `to` picks for what each
    /// already holds; returns how many.
    pub fn requeue_failed(
        &self,
        run_id: i64,
        error_code: Option<&str>,
        to: &Requeue,
    ) -> Result<u64, StoreError> {
        let err = |e| self.err(e);
        let tx = self.conn.unchecked_transaction().map_err(err)?;
        let (mut moves, mut requeued) = (Moves::default(), 0);
        {
            // `state = 'failed'` spelt out: the index of rows in error
            // (migration 08) finds them.
            let mut stmt = tx
                .prepare(
                    "UPDATE rows SET attempts = 0, state = CASE
                         WHEN ?6 IS NOT NULL AND EXISTS (SELECT 1 FROM attempts a
                             WHERE a.run_id = rows.run_id AND a.row_number = rows.row_number
                               AND a.endpoint = ?6) THEN ?7
                         WHEN pnm_order_identifier IS NULL THEN ?3
                         WHEN embedded_js_url IS NULL THEN ?4
                         ELSE ?5 END
                     WHERE run_id = ?1 AND state = 'failed' AND (?2 IS NULL OR last_error_code = ?2)
                     RETURNING state",
                )
                .map_err(err)?;
            let mut to_states = stmt
                .query(params![
                    run_id,
                    error_code,
                    to.no_order.as_str(),
                    to.order.as_str(),
                    to.urls.as_str(),
                    to.attempted.map(|(endpoint, _)| endpoint),
                    to.attempted.map(|(_, state)| state.as_str()),
                ])
                .map_err(err)?;
            while let Some(r) = to_states.next().map_err(err)? {
                moves.moved(RowState::Failed, read_state(r, 0).map_err(err)?, 1);
                requeued += 1;
            }
        }
        moves.write(&tx, run_id).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(requeued)
    }
}
