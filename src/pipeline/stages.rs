//! The work of each stage: create one order; refresh URLs and issue smart
//! tokens for a customer's orders, batched.

use std::sync::atomic::{AtomicBool, Ordering};

use super::context::{Ctx, Outcome};
use super::progress::StageProgress;
use crate::input::{Header, Row};
use crate::provider::paynearme::params::ep;
use crate::provider::paynearme::{Endpoint, PnmOrder};
use crate::provider::{ErrorClass, ProviderError};
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Most orders a customer-wide `refresh_embedded_js_urls` page returns.
pub const PAGE_LIMIT: usize = 5;

/// One unit of work, routed to the worker that owns its customer.
pub enum Job {
    Create(Box<(Row, StoredRow)>),
    Change(Box<(Row, StoredRow)>),
    Lookup(Group),
    Refresh(Group),
    Token(Group),
    CeRetry(Box<(Row, StoredRow)>),
    /// A smart token for one order with its input row's token columns.
    TokenRow(Box<(Row, StoredRow)>),
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
        Job::Change(job) => change(ctx, header, &job.0, &job.1, progress).await,
        Job::Lookup(group) => lookup(ctx, group, progress).await,
        Job::TokenRow(job) => token_row(ctx, header, &job.0, &job.1, progress).await,
        Job::CeRetry(job) => super::ce_stage::ce_retry(ctx, header, &job.0, &job.1, progress).await,
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
    let mut params = row.params_for(header, ep::CREATE);
    if !params.iter().any(|(k, _)| *k == "site_order_identifier") {
        params.push(("site_order_identifier", order_id));
    }
    let maybe_exists = AtomicBool::new(stored.state == RowState::Creating.as_str());
    if !maybe_exists.load(Ordering::Relaxed)
        && (ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Creating).await)
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
            .pnm()
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
    let result = ctx.pnm().create_order(params).await;
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
/// Several rows may name the same order; each gets the answer.
fn take_answered(
    remaining: &mut Vec<StoredRow>,
    orders: Vec<PnmOrder>,
) -> Vec<(StoredRow, PnmOrder)> {
    let mut answered = Vec::new();
    remaining.retain(|row| match orders.iter().find(|o| same_order(row, o)) {
        Some(order) => {
            answered.push((row.clone(), order.clone()));
            false
        }
        None => true,
    });
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

    /// Calls the stage's endpoint with `params` plus the run's options for
    /// it (`force`, smart-token options).
    async fn call(
        self,
        ctx: &Ctx,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        ctx.permit(self.endpoint()).await;
        let mut all = params.to_vec();
        match self {
            GroupStage::Refresh => {
                all.extend(
                    ctx.options
                        .refresh
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
                ctx.pnm().refresh_urls(&all).await
            }
            GroupStage::Token => {
                all.extend(
                    ctx.options
                        .token
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                );
                ctx.pnm().smart_token(&all).await
            }
        }
    }

    fn record(self, row: u64, order: PnmOrder) -> Option<Write> {
        match self {
            GroupStage::Refresh => {
                order.embedded_js_url.as_ref()?;
                Some(Write::Urls { row, order })
            }
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

/// How to name a row's order in a request: `pnm_order_identifier`, else
/// `site_order_identifier`.
fn order_selector(row: &StoredRow) -> Option<(&'static str, String)> {
    match (&row.pnm_order_identifier, &row.site_order_identifier) {
        (Some(pnm), _) => Some(("pnm_order_identifier", pnm.clone())),
        (None, Some(site)) => Some(("site_order_identifier", site.clone())),
        (None, None) => None,
    }
}

/// One call per order, for rows a customer-wide call did not cover.
async fn per_order(ctx: &Ctx, stage: GroupStage, rows: Vec<StoredRow>, progress: &StageProgress) {
    for row in rows {
        let Some((key, id)) = order_selector(&row) else {
            continue;
        };
        let params = [(key, id.as_str())];
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

/// `refresh`: finds each row's orders. A row naming a customer pages through
/// all its orders (`limit` 5) and expands into one row per order; rows
/// naming orders are refreshed like `run`'s, batched per customer when the
/// customer is known. With URLs off, orders are only looked up.
async fn lookup(ctx: &Ctx, group: Group, progress: &StageProgress) {
    let (order_rows, customer_rows): (Vec<StoredRow>, Vec<StoredRow>) = group
        .rows
        .into_iter()
        .partition(|r| order_selector(r).is_some());
    for row in customer_rows {
        let selector = match (&row.site_customer_identifier, &row.pnm_customer_identifier) {
            (Some(c), _) => ("site_customer_identifier", c.clone()),
            (None, Some(p)) => ("pnm_customer_identifier", p.clone()),
            (None, None) => continue,
        };
        let Some(orders) = customer_orders(ctx, &row, &selector).await else {
            return;
        };
        let found = orders.len().max(1) as u64;
        ctx.write(Write::Expand {
            parent: row.row_number,
            orders,
        })
        .await;
        progress.inc(found);
    }
    if order_rows.is_empty() {
        return;
    }
    if !ctx.options.urls {
        for row in order_rows {
            let order = PnmOrder {
                pnm_order_identifier: row.pnm_order_identifier.clone(),
                site_order_identifier: row.site_order_identifier.clone(),
                ..PnmOrder::default()
            };
            ctx.write(Write::Urls {
                row: row.row_number,
                order,
            })
            .await;
            progress.inc(1);
        }
        return;
    }
    refresh(
        ctx,
        Group {
            customer: group.customer,
            rows: order_rows,
        },
        progress,
    )
    .await;
}

/// Every order of a customer: pages of five through
/// `refresh_embedded_js_urls` (or one `find_orders` with URLs off). `None`
/// when the run stops; a failure fails the row.
async fn customer_orders(
    ctx: &Ctx,
    row: &StoredRow,
    selector: &(&'static str, String),
) -> Option<Vec<PnmOrder>> {
    let rows = [row.row_number];
    if !ctx.options.urls {
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                ctx.permit(Endpoint::FindOrders).await;
                ctx.pnm().find_orders(selector.0, &selector.1).await
            })
            .await;
        return match found {
            Outcome::Done(orders) => Some(orders),
            Outcome::Failed(error) => {
                ctx.row_failed();
                ctx.write(Write::Failed {
                    row: row.row_number,
                    code: error.code(),
                    message: error.to_string(),
                })
                .await;
                None
            }
            Outcome::Stopped => None,
        };
    }
    let limit = PAGE_LIMIT.to_string();
    let mut all = Vec::new();
    loop {
        let offset = all.len().to_string();
        let params = [
            (selector.0, selector.1.as_str()),
            ("limit", limit.as_str()),
            ("offset", offset.as_str()),
        ];
        match ctx
            .request(Endpoint::RefreshEmbeddedJsUrls, &rows, || {
                GroupStage::Refresh.call(ctx, &params)
            })
            .await
        {
            Outcome::Done(page) => {
                let short = page.len() < PAGE_LIMIT;
                all.extend(page);
                if short {
                    return Some(all);
                }
            }
            Outcome::Failed(error) => {
                ctx.row_failed();
                ctx.write(Write::Failed {
                    row: row.row_number,
                    code: error.code(),
                    message: error.to_string(),
                })
                .await;
                return None;
            }
            Outcome::Stopped => return None,
        }
    }
}

/// Changes the row's order once: the order is found by
/// `site_order_identifier` when the row has no `pnm_order_identifier`; intent
/// is committed before the change leaves, and a change whose outcome is
/// unknown (a killed run's) is checked against the order before it is resent.
async fn change(
    ctx: &Ctx,
    header: &Header,
    row: &Row,
    stored: &StoredRow,
    progress: &StageProgress,
) {
    let rows = [stored.row_number];
    let pnm = match (&stored.pnm_order_identifier, &stored.site_order_identifier) {
        (Some(pnm), _) => pnm.clone(),
        (None, Some(site)) => {
            let found = ctx
                .request(Endpoint::FindOrders, &rows, || async {
                    ctx.permit(Endpoint::FindOrders).await;
                    ctx.pnm().find_orders("site_order_identifier", site).await
                })
                .await;
            match found {
                Outcome::Done(orders) => {
                    match orders.into_iter().find_map(|o| o.pnm_order_identifier) {
                        Some(pnm) => pnm,
                        None => {
                            let error = ProviderError::Api {
                                endpoint: Endpoint::FindOrders.as_str(),
                                status: 404,
                                code: "order_not_found".into(),
                                description: format!("no order has site_order_identifier `{site}`"),
                            };
                            return fail(ctx, stored.row_number, &error, progress).await;
                        }
                    }
                }
                Outcome::Failed(error) => {
                    return fail(ctx, stored.row_number, &error, progress).await
                }
                Outcome::Stopped => return,
            }
        }
        (None, None) => return,
    };
    let mut params: Vec<(&str, &str)> = row
        .params_for(header, ep::CHANGE)
        .into_iter()
        .filter(|(k, _)| *k != "pnm_order_identifier" && *k != "site_order_identifier")
        .collect();
    if stored.state == RowState::Changing.as_str() {
        // A killed run may have sent the change: if the order already has
        // every value, it was applied.
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                ctx.permit(Endpoint::FindOrders).await;
                ctx.pnm()
                    .find_orders_raw("pnm_order_identifier", &pnm)
                    .await
            })
            .await;
        match found {
            Outcome::Done(orders) => {
                let applied = orders.iter().any(|o| {
                    params
                        .iter()
                        .all(|(k, v)| o.get(*k).and_then(|x| x.as_str()) == Some(*v))
                });
                if applied {
                    ctx.write(Write::Changed {
                        row: stored.row_number,
                        pnm_order: pnm,
                    })
                    .await;
                    progress.inc(1);
                    return;
                }
            }
            Outcome::Failed(error) => return fail(ctx, stored.row_number, &error, progress).await,
            Outcome::Stopped => return,
        }
    } else if ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Changing).await
    {
        return;
    }
    params.push(("pnm_order_identifier", pnm.as_str()));
    let outcome = ctx
        .request(Endpoint::ChangeOrder, &rows, || async {
            ctx.permit(Endpoint::ChangeOrder).await;
            ctx.pnm().change_order(&params).await
        })
        .await;
    match outcome {
        Outcome::Done(()) => {
            ctx.write(Write::Changed {
                row: stored.row_number,
                pnm_order: pnm.clone(),
            })
            .await;
            progress.inc(1);
        }
        Outcome::Failed(error) => fail(ctx, stored.row_number, &error, progress).await,
        Outcome::Stopped => {}
    }
}

/// A smart token for one order, with its input row's token columns
/// (`payment_amount`, Guaranteed ACH fields, ...): rows with their own
/// values cannot share a customer-wide call.
async fn token_row(
    ctx: &Ctx,
    header: &Header,
    row: &Row,
    stored: &StoredRow,
    progress: &StageProgress,
) {
    let stage = GroupStage::Token;
    let Some((key, id)) = order_selector(stored) else {
        return;
    };
    let mut params = vec![(key, id.as_str())];
    params.extend(row.params_for(header, ep::TOKEN_ROW));
    match ctx
        .request(stage.endpoint(), &[stored.row_number], || {
            stage.call(ctx, &params)
        })
        .await
    {
        Outcome::Done(orders) => {
            let mut remaining = vec![stored.clone()];
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
        Outcome::Failed(error) => fail(ctx, stored.row_number, &error, progress).await,
        Outcome::Stopped => {}
    }
}
