//! Refresh URLs and issue smart tokens for a customer's rows, batched, and
//! one order at a time where a batch cannot serve.

use super::{fail, Group, PAGE_LIMIT};
use crate::input::{Header, Row};
use crate::pipeline::context::{Outcome, RunContext, Unsettled};
use crate::pipeline::progress::StageProgress;
use crate::provider::paynearme::params::ep;
use crate::provider::paynearme::{Endpoint, PnmOrder};
use crate::provider::ProviderError;
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

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
pub(super) enum GroupStage {
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
    /// it (`force`, smart-token options). Each call issues what it answers
    /// (a token, with `force` a URL) and supersedes what was issued before:
    /// after an attempt of the same call (`unsettled`) got no answer, it
    /// waits until that one can no longer land after this one, so the
    /// value recorded is the one the provider holds last.
    pub(super) async fn call(
        self,
        ctx: &RunContext,
        params: &[(&str, &str)],
        unsettled: &Unsettled,
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        if !ctx.after_earlier_invocations().await || !ctx.settle(unsettled).await {
            return Err(ProviderError::Cancelled);
        }
        let sent = std::time::SystemTime::now();
        let result = self.send(ctx, params).await;
        unsettled.note(sent, &result);
        result
    }

    async fn send(
        self,
        ctx: &RunContext,
        params: &[(&str, &str)],
    ) -> Result<Vec<PnmOrder>, ProviderError> {
        let _slot = ctx.permit(self.endpoint()).await?;
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
                Some(Write::Urls {
                    row,
                    order: order.into(),
                })
            }
            GroupStage::Token => Some(Write::Token {
                row,
                token: order.secure_smart_token?,
                link: order.secure_smart_link,
            }),
        }
    }
}

/// Records each answer; returns the rows recorded, with what the answer
/// told (identifiers, URL).
async fn record_answers(
    ctx: &RunContext,
    stage: GroupStage,
    answered: Vec<(StoredRow, PnmOrder)>,
    progress: &StageProgress,
) -> Vec<StoredRow> {
    let mut recorded = Vec::with_capacity(answered.len());
    for (mut row, order) in answered {
        let learned = order.clone();
        match stage.record(row.row_number, order) {
            Some(write) => {
                ctx.write(write).await;
                progress.inc(1);
                row.pnm_order_identifier =
                    row.pnm_order_identifier.or(learned.pnm_order_identifier);
                row.pnm_customer_identifier = row
                    .pnm_customer_identifier
                    .or(learned.pnm_customer_identifier);
                row.embedded_js_url = learned.embedded_js_url.or(row.embedded_js_url);
                row.embedded_js_url_expires_at = learned
                    .embedded_js_url_expires_at
                    .or(row.embedded_js_url_expires_at);
                row.state = RowState::UrlsRefreshed;
                recorded.push(row);
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
    recorded
}

/// How to name a row's order in a request: `pnm_order_identifier`, else
/// `site_order_identifier`.
pub(crate) fn order_selector(row: &StoredRow) -> Option<(&'static str, String)> {
    match (&row.pnm_order_identifier, &row.site_order_identifier) {
        (Some(pnm), _) => Some(("pnm_order_identifier", pnm.clone())),
        (None, Some(site)) => Some(("site_order_identifier", site.clone())),
        (None, None) => None,
    }
}

/// One call per order, for rows a customer-wide call did not cover; rows
/// that name an order already answered share that answer (an order's URL
/// and token are issued once).
async fn per_order(
    ctx: &RunContext,
    stage: GroupStage,
    rows: Vec<StoredRow>,
    progress: &StageProgress,
) -> Vec<StoredRow> {
    let mut answered: Vec<PnmOrder> = Vec::new();
    let mut recorded = Vec::new();
    for row in rows {
        let Some((key, id)) = order_selector(&row) else {
            continue;
        };
        if let Some(order) = answered.iter().find(|o| same_order(&row, o)) {
            recorded.extend(record_answers(ctx, stage, vec![(row, order.clone())], progress).await);
            continue;
        }
        let params = [(key, id.as_str())];
        let unsettled = Unsettled::default();
        let outcome = ctx
            .request(stage.endpoint(), &[row.row_number], || {
                stage.call(ctx, &params, &unsettled)
            })
            .await;
        if let Outcome::Done(orders) = &outcome {
            answered.extend(orders.iter().cloned());
        }
        match record_one(ctx, stage, row, outcome, progress).await {
            Some(rows) => recorded.extend(rows),
            None => return recorded,
        }
    }
    recorded
}

/// What [`refresh`] did for a customer's rows.
pub(crate) struct Refreshed {
    /// The rows whose URL was recorded (ready for their token).
    pub rows: Vec<StoredRow>,
    /// The pages showed every order of the customer to be in this run.
    pub exclusive: bool,
}

/// Refreshes the URLs of a customer's ready orders: pages of five through the
/// customer's orders when it has several (and `may_page`), one call per
/// order otherwise. The pages show all the customer's orders at the
/// provider: whether they are all in this run is recorded for the token
/// stage.
pub(crate) async fn refresh(
    ctx: &RunContext,
    group: Group,
    may_page: bool,
    progress: &StageProgress,
) -> Refreshed {
    let stage = GroupStage::Refresh;
    let mut remaining = group.rows;
    let mut recorded = Vec::new();
    let mut exclusive = false;
    if remaining.len() > 1 && may_page && !group.customer.is_empty() {
        let ours = remaining.clone();
        let mut foreign = false;
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
            let unsettled = Unsettled::default();
            match ctx
                .request(stage.endpoint(), &rows, || {
                    stage.call(ctx, &params, &unsettled)
                })
                .await
            {
                Outcome::Done(page) => {
                    let short = page.len() < PAGE_LIMIT;
                    foreign |= page
                        .iter()
                        .any(|order| !ours.iter().any(|row| same_order(row, order)));
                    let answered = take_answered(&mut remaining, page);
                    recorded.extend(record_answers(ctx, stage, answered, progress).await);
                    // A full page may be followed by orders of other runs:
                    // one more page tells (and costs one request only for
                    // customers with a multiple of five orders).
                    if short || (remaining.is_empty() && foreign) {
                        exclusive = short && !foreign;
                        ctx.write(Write::Customer {
                            customer: group.customer.clone(),
                            exclusive,
                        })
                        .await;
                        break;
                    }
                    offset += PAGE_LIMIT;
                }
                Outcome::Failed(error) => {
                    for row in remaining {
                        fail(ctx, row.row_number, &error, progress).await;
                    }
                    return Refreshed {
                        rows: recorded,
                        exclusive: false,
                    };
                }
                Outcome::Stopped => {
                    return Refreshed {
                        rows: recorded,
                        exclusive: false,
                    }
                }
            }
        }
    }
    recorded.extend(per_order(ctx, stage, remaining, progress).await);
    Refreshed {
        rows: recorded,
        exclusive,
    }
}

/// Issues smart tokens: one customer-wide call when the customer has several
/// ready orders and all its orders at the provider are in this run (a
/// customer-wide call reissues every one of them), one call per order
/// otherwise.
pub(crate) async fn token(ctx: &RunContext, group: Group, progress: &StageProgress) {
    let stage = GroupStage::Token;
    let mut remaining = group.rows;
    if remaining.len() > 1 && group.exclusive {
        let params = [("site_customer_identifier", group.customer.as_str())];
        let rows = row_numbers(&remaining);
        let unsettled = Unsettled::default();
        match ctx
            .request(stage.endpoint(), &rows, || {
                stage.call(ctx, &params, &unsettled)
            })
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

/// A smart token for one order, with its input row's token columns
/// (`payment_amount`, Guaranteed ACH fields, ...): rows with their own
/// values cannot share a customer-wide call.
pub(crate) async fn token_row(
    ctx: &RunContext,
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
    let unsettled = Unsettled::default();
    let outcome = ctx
        .request(stage.endpoint(), &[stored.row_number], || {
            stage.call(ctx, &params, &unsettled)
        })
        .await;
    record_one(ctx, stage, stored.clone(), outcome, progress).await;
}

/// Records the outcome of a call for one order: the rows recorded, or
/// `None` when the run stops.
async fn record_one(
    ctx: &RunContext,
    stage: GroupStage,
    row: StoredRow,
    outcome: Outcome<Vec<PnmOrder>>,
    progress: &StageProgress,
) -> Option<Vec<StoredRow>> {
    match outcome {
        Outcome::Done(orders) => {
            let mut remaining = vec![row];
            let answered = take_answered(&mut remaining, orders);
            let recorded = record_answers(ctx, stage, answered, progress).await;
            for row in remaining {
                fail(
                    ctx,
                    row.row_number,
                    &not_returned(stage.endpoint()),
                    progress,
                )
                .await;
            }
            Some(recorded)
        }
        Outcome::Failed(error) => {
            fail(ctx, row.row_number, &error, progress).await;
            Some(Vec::new())
        }
        Outcome::Stopped => None,
    }
}
