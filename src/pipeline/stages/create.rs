//! `create_order`, exactly once per row.

use std::time::SystemTime;

use super::fail;
use crate::input::{Header, Row};
use crate::money::Amount;
use crate::pipeline::context::{Outcome, RunContext, Unsettled};
use crate::pipeline::progress::StageProgress;
use crate::provider::paynearme::params::ep;
use crate::provider::paynearme::{Endpoint, PnmOrder};
use crate::provider::ProviderError;
use crate::store::rows::CONFLICTING_ORDER;
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Creates the row's order exactly once: intent is committed before the
/// request leaves, and an attempt whose outcome is unknown (this run's or a
/// killed run's) is reconciled with `find_orders` before anything is resent.
///
/// Returns the order's `(pnm_order_identifier, pnm_customer_identifier)`
/// once it exists.
pub(crate) async fn create(
    ctx: &RunContext,
    header: &Header,
    row: &Row,
    stored: &StoredRow,
    progress: &StageProgress,
) -> Option<(String, Option<String>)> {
    let order_id = stored.site_order_identifier.as_deref()?;
    let mut params = row.params_for(header, ep::CREATE);
    if !params.iter().any(|(k, _)| *k == "site_order_identifier") {
        params.push(("site_order_identifier", order_id));
    }
    // A killed run's create may have been sent, and may still be running.
    let unsettled = if stored.state == RowState::Creating {
        Unsettled::resumed(stored.intent_at)
    } else {
        Unsettled::default()
    };
    if !unsettled.maybe_applied()
        && (ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Creating).await)
    {
        return None;
    }
    let outcome = ctx
        .request(Endpoint::CreateOrder, &[stored.row_number], || {
            create_attempt(ctx, &unsettled, stored.row_number, order_id, &params)
        })
        .await;
    match outcome {
        Outcome::Done(order) => match order.pnm_order_identifier {
            Some(pnm_order) => {
                ctx.write(Write::Created {
                    row: stored.row_number,
                    pnm_order: pnm_order.clone(),
                    pnm_customer: order.pnm_customer_identifier.clone(),
                })
                .await;
                progress.inc(1);
                return Some((pnm_order, order.pnm_customer_identifier));
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
    None
}

/// What makes `order` (found by this row's `site_order_identifier`) not
/// provably the row's order: the same checks as adopting an earlier run's
/// order from the database (customer and amount) plus the currency. The
/// customer and amount the row names must be shown and equal: an order the
/// lookup does not show them for cannot be told apart from someone else's,
/// and is not adopted. (A currency the lookup does not show is not held
/// against it.)
fn not_this_rows_order(order: &PnmOrder, params: &[(&str, &str)]) -> Option<String> {
    let ours = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    };
    let same_amount = |a: &str, b: &str| match (a.parse::<Amount>(), b.parse::<Amount>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    type Same = fn(&str, &str) -> bool;
    let checks: [(&str, Option<&str>, Same, bool); 3] = [
        (
            "site_customer_identifier",
            order.site_customer_identifier.as_deref(),
            |a, b| a == b,
            true,
        ),
        (
            "order_amount",
            order.order_amount.as_deref(),
            same_amount,
            true,
        ),
        (
            "order_currency",
            order.order_currency.as_deref(),
            |a, b| a.eq_ignore_ascii_case(b),
            false,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(name, theirs, same, required)| {
            let ours = ours(name)?;
            match theirs {
                Some(theirs) if !same(ours, theirs) => Some(format!(
                    "its {name} is `{theirs}` where this row says `{ours}`"
                )),
                None if required => Some(format!(
                    "the lookup does not show its {name}, so it cannot be told from another \
                 customer's or amount's order"
                )),
                _ => None,
            }
        })
}

/// One attempt: reconcile first when an earlier attempt may have created the
/// order, then create.
async fn create_attempt(
    ctx: &RunContext,
    unsettled: &Unsettled,
    row: u64,
    order_id: &str,
    params: &[(&str, &str)],
) -> Result<PnmOrder, ProviderError> {
    if unsettled.maybe_applied() {
        // Not before an unanswered create could have landed.
        if !ctx.settle(unsettled).await {
            return Err(ProviderError::Cancelled);
        }
        let _slot = ctx.permit(Endpoint::FindOrders).await?;
        let found = ctx
            .pnm()
            .find_orders("site_order_identifier", order_id)
            .await?;
        if let Some(order) = found
            .into_iter()
            .find(|o| o.site_order_identifier.as_deref() == Some(order_id))
        {
            if let Some(differs) = not_this_rows_order(&order, params) {
                return Err(ProviderError::Api {
                    endpoint: Endpoint::FindOrders.as_str(),
                    status: 409,
                    code: CONFLICTING_ORDER.into(),
                    description: format!(
                        "the provider already holds an order with site_order_identifier \
                         `{order_id}`, but {differs}: it is not this row's order, so it is neither \
                         adopted nor created again. Give this row its own \
                         site_order_identifier, or correct the row"
                    ),
                });
            }
            tracing::info!(row, "adopted the order an earlier attempt created");
            return Ok(order);
        }
        unsettled.settled();
        // Sent again: a resume after a kill waits from now, not from when
        // the first attempt left.
        if !ctx.intent(row, RowState::Creating).await {
            return Err(ProviderError::Cancelled);
        }
    }
    let _slot = ctx.permit(Endpoint::CreateOrder).await?;
    let sent = SystemTime::now();
    let result = ctx.pnm().create_order(params).await;
    unsettled.note(sent, &result);
    result
}
