//! The work of each stage: create one order; refresh URLs and issue smart
//! tokens for a customer's orders, batched.

use std::sync::atomic::{AtomicBool, Ordering};

use super::context::{Ctx, Outcome};
use super::progress::StageProgress;
use crate::input::{Header, Row};
use crate::provider::paynearme::{Endpoint, PnmOrder};
use crate::provider::{ErrorClass, ProviderError};
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Most orders a customer-wide `refresh_embedded_js_urls` page returns.
pub const PAGE_LIMIT: usize = 5;

/// One unit of work, routed to the worker that owns its customer.
pub enum Job {
    Create(Box<(Row, StoredRow)>),
    Refresh(Group),
    Token(Group),
}

/// A customer's rows that are ready for the same stage.
pub struct Group {
    pub customer: String,
    pub rows: Vec<StoredRow>,
}

/// Runs one job to its end.
pub async fn execute(ctx: &Ctx, header: &Header, job: Job, progress: &StageProgress) {
    match job {
        Job::Create(job) => create(ctx, header, &job.0, &job.1, progress).await,
        Job::Refresh(group) => refresh(ctx, group, progress).await,
        Job::Token(group) => token(ctx, group, progress).await,
    }
}

async fn fail(ctx: &Ctx, row: u64, error: &ProviderError, progress: &StageProgress) {
    ctx.row_failed();
    ctx.write(Write::Failed {
        row,
        code: error.code(),
        message: error.to_string(),
    })
    .await;
    progress.inc(1);
}

/// Creates the row's order exactly once: intent is committed before the
/// request leaves, and an attempt whose outcome is unknown (this run's or a
/// killed run's) is reconciled with `find_orders` before anything is resent.
async fn create(
    ctx: &Ctx,
    header: &Header,
    row: &Row,
    stored: &StoredRow,
    progress: &StageProgress,
) {
    let Some(order_id) = stored.site_order_identifier.as_deref() else {
        return;
    };
    let mut params = row.params(header);
    if !params.iter().any(|(k, _)| *k == "site_order_identifier") {
        params.push(("site_order_identifier", order_id));
    }
    let maybe_exists = AtomicBool::new(stored.state == RowState::Creating.as_str());
    if !maybe_exists.load(Ordering::Relaxed)
        && (ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number).await)
    {
        return;
    }
    let outcome = ctx
        .request(Endpoint::CreateOrder, &[stored.row_number], || {
            create_attempt(ctx, &maybe_exists, stored.row_number, order_id, &params)
        })
        .await;
    match outcome {
        Outcome::Done(order) => match order.pnm_order_identifier {
            Some(pnm_order) => {
                ctx.write(Write::Created {
                    row: stored.row_number,
                    pnm_order,
                    pnm_customer: order.pnm_customer_identifier,
                })
                .await;
                progress.inc(1);
            }
            None => {
                let error = ProviderError::UnexpectedBody {
                    endpoint: Endpoint::CreateOrder.as_str(),
                    status: 200,
                    snippet: "order without pnm_order_identifier".into(),
                };
                fail(ctx, stored.row_number, &error, progress).await;
            }
        },
        Outcome::Failed(error) => fail(ctx, stored.row_number, &error, progress).await,
        Outcome::Stopped => {}
    }
}

/// One attempt: reconcile first when an earlier attempt may have created the
/// order, then create.
async fn create_attempt(
    ctx: &Ctx,
    maybe_exists: &AtomicBool,
    row: u64,
    order_id: &str,
    params: &[(&str, &str)],
) -> Result<PnmOrder, ProviderError> {
    if maybe_exists.load(Ordering::Relaxed) {
        ctx.permit(Endpoint::FindOrders).await;
        let found = ctx
            .client
            .find_orders("site_order_identifier", order_id)
            .await?;
        if let Some(order) = found
            .into_iter()
            .find(|o| o.site_order_identifier.as_deref() == Some(order_id))
        {
            tracing::info!(row, "adopted the order an earlier attempt created");
            return Ok(order);
        }
        maybe_exists.store(false, Ordering::Relaxed);
    }
    ctx.permit(Endpoint::CreateOrder).await;
    let result = ctx.client.create_order(params).await;
    if let Err(e) = &result {
        if matches!(
            e.class(),
            ErrorClass::Transient {
                maybe_applied: true
            }
        ) {
            maybe_exists.store(true, Ordering::Relaxed);
        }
    }
    result
}

/// Whether an answer's order is this row's.
fn same_order(row: &StoredRow, order: &PnmOrder) -> bool {
    match (&order.pnm_order_identifier, &row.pnm_order_identifier) {
        (Some(a), Some(b)) => a == b,
        _ => {
            order.site_order_identifier.is_some()
                && order.site_order_identifier == row.site_order_identifier
        }
    }
}

/// Takes the rows that `orders` answer for out of `remaining`.
fn take_answered(
    remaining: &mut Vec<StoredRow>,
    orders: Vec<PnmOrder>,
) -> Vec<(StoredRow, PnmOrder)> {
    let mut answered = Vec::new();
    for order in orders {
        if let Some(pos) = remaining.iter().position(|r| same_order(r, &order)) {
            answered.push((remaining.swap_remove(pos), order));
        }
    }
    answered
}

fn row_numbers(rows: &[StoredRow]) -> Vec<u64> {
    rows.iter().map(|r| r.row_number).collect()
}

fn not_returned(endpoint: Endpoint) -> ProviderError {
    ProviderError::Api {
        endpoint: endpoint.as_str(),
        status: 200,
        code: "order_not_found".into(),
        description: "the provider's answer did not include this order".into(),
    }
}

/// Which stage a group call is for.
#[derive(Clone, Copy)]
enum GroupStage {
    Refresh,
    Token,
}

impl GroupStage {
    fn endpoint(self) -> Endpoint {
        match self {
            GroupStage::Refresh => Endpoint::RefreshEmbeddedJsUrls,
            GroupStage::Token => Endpoint::GetSmartToken,
        }
    }

    async fn call(
        self,
        ctx: &Ctx,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        ctx.permit(self.endpoint()).await;
        match self {
            GroupStage::Refresh => ctx.client.refresh_urls(params).await,
            GroupStage::Token => ctx.client.smart_token(params).await,
        }
    }

    fn record(self, row: u64, order: PnmOrder) -> Option<Write> {
        match self {
            GroupStage::Refresh => Some(Write::Urls {
                row,
                url: order.embedded_js_url?,
                expires_at: order.embedded_js_url_expires_at,
            }),
            GroupStage::Token => Some(Write::Token {
                row,
                token: order.secure_smart_token?,
                link: order.secure_smart_link,
            }),
        }
    }
}

async fn record_answers(
    ctx: &Ctx,
    stage: GroupStage,
    answered: Vec<(StoredRow, PnmOrder)>,
    progress: &StageProgress,
) {
    for (row, order) in answered {
        match stage.record(row.row_number, order) {
            Some(write) => {
                ctx.write(write).await;
                progress.inc(1);
            }
            None => {
                let error = ProviderError::UnexpectedBody {
                    endpoint: stage.endpoint().as_str(),
                    status: 200,
                    snippet: "answer for the order lacks the expected field".into(),
                };
                fail(ctx, row.row_number, &error, progress).await;
            }
        }
    }
}

/// One call per order, for rows a customer-wide call did not cover.
async fn per_order(ctx: &Ctx, stage: GroupStage, rows: Vec<StoredRow>, progress: &StageProgress) {
    for row in rows {
        let Some(pnm) = row.pnm_order_identifier.clone() else {
            continue;
        };
        let params = [("pnm_order_identifier", pnm.as_str())];
        match ctx
            .request(stage.endpoint(), &[row.row_number], || {
                stage.call(ctx, &params)
            })
            .await
        {
            Outcome::Done(orders) => {
                let mut remaining = vec![row];
                let answered = take_answered(&mut remaining, orders);
                record_answers(ctx, stage, answered, progress).await;
                for row in remaining {
                    fail(
                        ctx,
                        row.row_number,
                        &not_returned(stage.endpoint()),
                        progress,
                    )
                    .await;
                }
            }
            Outcome::Failed(error) => fail(ctx, row.row_number, &error, progress).await,
            Outcome::Stopped => return,
        }
    }
}

/// Refreshes the URLs of a customer's ready orders: pages of five through the
/// customer's orders when it has several, one call per order otherwise.
async fn refresh(ctx: &Ctx, group: Group, progress: &StageProgress) {
    let stage = GroupStage::Refresh;
    let mut remaining = group.rows;
    if remaining.len() > 1 {
        let limit = PAGE_LIMIT.to_string();
        let mut offset = 0usize;
        loop {
            let offset_text = offset.to_string();
            let params = [
                ("site_customer_identifier", group.customer.as_str()),
                ("limit", limit.as_str()),
                ("offset", offset_text.as_str()),
            ];
            let rows = row_numbers(&remaining);
            match ctx
                .request(stage.endpoint(), &rows, || stage.call(ctx, &params))
                .await
            {
                Outcome::Done(page) => {
                    let short = page.len() < PAGE_LIMIT;
                    let answered = take_answered(&mut remaining, page);
                    record_answers(ctx, stage, answered, progress).await;
                    if short || remaining.is_empty() {
                        break;
                    }
                    offset += PAGE_LIMIT;
                }
                Outcome::Failed(error) => {
                    for row in remaining {
                        fail(ctx, row.row_number, &error, progress).await;
                    }
                    return;
                }
                Outcome::Stopped => return,
            }
        }
    }
    per_order(ctx, stage, remaining, progress).await;
}

/// Issues smart tokens: one customer-wide call when the customer has several
/// ready orders, one call per order otherwise.
async fn token(ctx: &Ctx, group: Group, progress: &StageProgress) {
    let stage = GroupStage::Token;
    let mut remaining = group.rows;
    if remaining.len() > 1 {
        let params = [("site_customer_identifier", group.customer.as_str())];
        let rows = row_numbers(&remaining);
        match ctx
            .request(stage.endpoint(), &rows, || stage.call(ctx, &params))
            .await
        {
            Outcome::Done(orders) => {
                let answered = take_answered(&mut remaining, orders);
                record_answers(ctx, stage, answered, progress).await;
            }
            Outcome::Failed(error) => {
                for row in remaining {
                    fail(ctx, row.row_number, &error, progress).await;
                }
                return;
            }
            Outcome::Stopped => return,
        }
    }
    per_order(ctx, stage, remaining, progress).await;
}
