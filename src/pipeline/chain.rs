//! Each command's chain for one customer: `run` creates, refreshes and
//! issues tokens; `refresh` expands and refreshes, then issues tokens;
//! `change` changes each order; `ce retry-payments` retries each payment.
//! Never two requests of one customer in flight together.

use std::collections::HashMap;
use std::sync::Arc;

use super::dispatch::{RunEnv, Unit};
use super::progress::StageProgress;
use super::stages::{self, create::create, groups, Group};
use super::{blocking, Mode, Stage};
use crate::input::Row;
use crate::pipeline::context::RunContext;
use crate::report::StageTiming;
use crate::store::{RowState, StoredRow};

/// Progress of each step of a command's chain, shown together.
pub(super) struct Bars {
    bars: Vec<(Stage, StageProgress)>,
}

impl Bars {
    /// A bar per step of `mode`, each over the rows still to go through it
    /// (`counts`: the run's rows per state).
    pub fn start(mode: Mode, counts: &[(RowState, u64)], quiet: bool) -> Bars {
        let multi = indicatif::MultiProgress::new();
        let mut taken: Vec<RowState> = Vec::new();
        let mut bars = Vec::new();
        for &stage in mode.stages() {
            for state in stage.takes() {
                if !taken.contains(state) {
                    taken.push(*state);
                }
            }
            // `refresh` shows its customer expansion on its refresh bar.
            if stage == Stage::Expand {
                continue;
            }
            let total = counts
                .iter()
                .filter(|(s, _)| taken.contains(s))
                .map(|(_, n)| n)
                .sum();
            let progress = StageProgress::start_in(Some(&multi), stage.name(), total, quiet);
            bars.push((stage, progress));
        }
        Bars { bars }
    }

    /// The bar of `stage` (the first one's when the chain has no such step).
    pub fn get(&self, stage: Stage) -> &StageProgress {
        let stage = if stage == Stage::Expand {
            Stage::Lookup
        } else {
            stage
        };
        self.bars
            .iter()
            .find(|(s, _)| *s == stage)
            .map_or_else(|| self.first(), |(_, p)| p)
    }

    /// The first step's bar.
    pub fn first(&self) -> &StageProgress {
        &self.bars[0].1
    }

    /// Ends every bar; the timings of the steps that did any work.
    pub fn finish(&self) -> Vec<StageTiming> {
        for (_, bar) in &self.bars {
            bar.finish();
        }
        self.bars
            .iter()
            .filter(|(_, bar)| bar.done() > 0)
            .map(|(stage, bar)| StageTiming {
                stage: stage.name().to_string(),
                rows: bar.done(),
                seconds: bar.busy_secs(),
            })
            .collect()
    }
}

/// Takes one customer's rows through its command's chain.
pub(super) async fn customer(ctx: &RunContext, env: &RunEnv, unit: Unit) {
    if let Some(row) = stages::failpoint_row() {
        assert!(
            !unit.rows.iter().any(|(r, _)| r.row_number == row),
            "failpoint panic-at-row:{row}"
        );
    }
    match env.mode {
        Mode::Run => run(ctx, env, unit).await,
        Mode::Refresh { .. } => refresh(ctx, env, unit).await,
        Mode::Change => {
            for (stored, input) in unit.rows {
                if ctx.shutdown.is_stopping() {
                    return;
                }
                if let Some(input) = input {
                    let bar = env.bars.get(Stage::Change);
                    stages::change(ctx, &env.header, &input, &stored, bar).await;
                }
            }
        }
        Mode::CeRetry { .. } => {
            for (stored, input) in unit.rows {
                if ctx.shutdown.is_stopping() {
                    return;
                }
                if let Some(input) = input {
                    let bar = env.bars.get(Stage::CeRetry);
                    stages::ce_retry(ctx, &env.header, &input, &stored, bar).await;
                }
            }
        }
    }
}

/// `run`: the customer's creates one after another, then its URLs (pages of
/// five), then its tokens.
async fn run(ctx: &RunContext, env: &RunEnv, unit: Unit) {
    let bars = &env.bars;
    let mut created = Vec::new();
    let mut ready = Vec::new();
    let mut inputs = HashMap::new();
    for (stored, input) in unit.rows {
        if ctx.shutdown.is_stopping() {
            return;
        }
        if let Some(input) = &input {
            inputs.insert(stored.input_row, input.clone());
        }
        match stored.state {
            RowState::Pending | RowState::Creating => {
                let Some(input) = input else { continue };
                let bar = bars.get(Stage::Create);
                if let Some((pnm_order, pnm_customer)) =
                    create(ctx, &env.header, &input, &stored, bar).await
                {
                    let mut row = stored;
                    row.pnm_order_identifier = Some(pnm_order);
                    row.pnm_customer_identifier = pnm_customer.or(row.pnm_customer_identifier);
                    row.state = RowState::Created;
                    created.push(row);
                }
            }
            RowState::Created => created.push(stored),
            RowState::UrlsRefreshed => ready.push(stored),
            _ => {}
        }
    }
    if ctx.shutdown.is_stopping() {
        return;
    }
    let customer = unit.customer.unwrap_or_default();
    let mut exclusive = unit.exclusive;
    if !created.is_empty() {
        let group = Group {
            customer: customer.clone(),
            rows: created,
            exclusive: false,
        };
        let refreshed = groups::refresh(ctx, group, true, bars.get(Stage::Refresh)).await;
        exclusive = refreshed.exclusive || (ready.is_empty() && exclusive);
        ready.extend(refreshed.rows);
    }
    if !ctx.shutdown.is_stopping() {
        tokens(ctx, env, customer, ready, exclusive, &inputs).await;
    }
}

/// `refresh`: the customer's rows naming it expand into its orders, then
/// rows naming orders are refreshed (batched when they are several), then
/// the tokens of every row now ready — read back from the store, since
/// expanded rows were made by the writer.
async fn refresh(ctx: &RunContext, env: &RunEnv, unit: Unit) {
    let Mode::Refresh { tokens: wanted, .. } = env.mode else {
        return;
    };
    let mut inputs = HashMap::new();
    let mut pending = Vec::new();
    let mut ready = Vec::new();
    for (stored, input) in unit.rows {
        if let Some(input) = input {
            inputs.insert(stored.input_row, input);
        }
        match stored.state {
            RowState::Pending => pending.push(stored),
            _ => ready.push(stored),
        }
    }
    let customer = unit.customer.unwrap_or_default();
    let mut exclusive = unit.exclusive;
    if !pending.is_empty() {
        let input_rows: Vec<u64> = pending.iter().map(|r| r.input_row).collect();
        let group = Group {
            customer: customer.clone(),
            rows: pending,
            exclusive: false,
        };
        stages::lookup(ctx, group, env.bars.get(Stage::Lookup)).await;
        if ctx.shutdown.is_stopping() || !wanted {
            return;
        }
        ctx.flush().await;
        let (reader, run_id, site) = (env.reader.clone(), env.run_id, customer.clone());
        let read = blocking(move || {
            let store = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let rows = store.ready_rows(run_id, &input_rows)?;
            let exclusive = !site.is_empty() && store.customer_wide_token_allowed(run_id, &site)?;
            Ok((rows, exclusive))
        })
        .await;
        match read {
            Ok((rows, wide)) => {
                for row in rows {
                    if !ready.iter().any(|r| r.row_number == row.row_number) {
                        ready.push(row);
                    }
                }
                exclusive = wide;
            }
            Err(e) => {
                tracing::error!("reading the customer's refreshed rows failed: {e}");
                return;
            }
        }
    }
    if wanted && !ctx.shutdown.is_stopping() {
        tokens(ctx, env, customer, ready, exclusive, &inputs).await;
    }
}

/// The customer's smart tokens: one call per row with its own token
/// columns, else one customer-wide call when it touches only these rows,
/// else one call per order.
async fn tokens(
    ctx: &RunContext,
    env: &RunEnv,
    customer: String,
    ready: Vec<StoredRow>,
    exclusive: bool,
    inputs: &HashMap<u64, Arc<Row>>,
) {
    if ready.is_empty() {
        return;
    }
    let bar = env.bars.get(Stage::Token);
    if env.header.has_token_columns() {
        for row in ready {
            if ctx.shutdown.is_stopping() {
                return;
            }
            if let Some(input) = inputs.get(&row.input_row) {
                groups::token_row(ctx, &env.header, input, &row, bar).await;
            }
        }
        return;
    }
    let group = Group {
        customer,
        rows: ready,
        exclusive,
    };
    groups::token(ctx, group, bar).await;
}
