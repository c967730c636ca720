//! `change_order`, exactly once per row.

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{fail, Group};
use crate::input::{Header, Row};
use crate::money::Amount;
use crate::pipeline::context::{Outcome, RunContext, Unsettled};
use crate::pipeline::progress::StageProgress;
use crate::provider::paynearme::params::ep;
use crate::provider::paynearme::Endpoint;
use crate::provider::ProviderError;
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Changes the row's order once: the order is found by
/// `site_order_identifier` when the row has no `pnm_order_identifier`; intent
/// is committed before the change leaves, and a change whose outcome is
/// unknown (a killed run's) is checked against the order before it is resent.
pub(crate) async fn change(
    ctx: &RunContext,
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
                    let _slot = ctx.permit(Endpoint::FindOrders).await?;
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
    if stored.state == RowState::Changing {
        // A killed run may have sent the change: if the order already has
        // every value, it was applied; if the lookup cannot show it, nobody
        // can tell, and it is not sent again. Not before a change still
        // running at the provider could have landed.
        if !ctx.settle(&Unsettled::resumed(stored.intent_at)).await {
            return;
        }
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                ctx.pnm()
                    .find_orders_raw("pnm_order_identifier", &pnm)
                    .await
            })
            .await;
        match found {
            Outcome::Done(orders) => match verdict(&orders, &pnm, &params) {
                Verdict::Applied => {
                    ctx.write(Write::Changed {
                        row: stored.row_number,
                        pnm_order: pnm,
                    })
                    .await;
                    progress.inc(1);
                    return;
                }
                Verdict::CannotTell(why) => {
                    return unknown(ctx, stored.row_number, &why, progress).await;
                }
                Verdict::NotApplied => {}
            },
            Outcome::Failed(error) => return fail(ctx, stored.row_number, &error, progress).await,
            Outcome::Stopped => return,
        }
    }
    // Also when a killed run's change was not applied: the time recorded is
    // when this one leaves, which a later resume waits from.
    if ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Changing).await {
        return;
    }
    params.push(("pnm_order_identifier", pnm.as_str()));
    // An attempt whose outcome is unknown (dropped connection, timeout,
    // 5xx) may have been applied: the order is compared before a resend.
    let unsettled = Unsettled::default();
    let outcome = ctx
        .request(Endpoint::ChangeOrder, &rows, || async {
            if unsettled.maybe_applied() {
                if !ctx.settle(&unsettled).await {
                    return Err(ProviderError::Cancelled);
                }
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                let orders = ctx
                    .pnm()
                    .find_orders_raw("pnm_order_identifier", &pnm)
                    .await?;
                match verdict(&orders, &pnm, &params) {
                    Verdict::Applied => {
                        tracing::info!(
                            row = stored.row_number,
                            "the change an unanswered attempt sent was applied; not sending it again"
                        );
                        return Ok(Verdict::Applied);
                    }
                    cannot_tell @ Verdict::CannotTell(_) => return Ok(cannot_tell),
                    Verdict::NotApplied => unsettled.settled(),
                }
                // Sent again: a resume after a kill waits from now.
                if !ctx.intent(stored.row_number, RowState::Changing).await {
                    return Err(ProviderError::Cancelled);
                }
            }
            let _slot = ctx.permit(Endpoint::ChangeOrder).await?;
            let sent = SystemTime::now();
            let result = ctx.pnm().change_order(&params).await;
            unsettled.note(sent, &result);
            result.map(|()| Verdict::Applied)
        })
        .await;
    match outcome {
        Outcome::Done(Verdict::CannotTell(why)) => {
            unknown(ctx, stored.row_number, &why, progress).await;
        }
        Outcome::Done(_) => {
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

/// What the order the provider shows says about a change that may have
/// been applied.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The order holds every value of the change.
    Applied,
    /// A value the order shows differs: the change did not land.
    NotApplied,
    /// The lookup does not show the order, or a field the change sets:
    /// nothing proves the change landed, and resending could apply it twice.
    CannotTell(String),
}

/// Compares the order `pnm` as the lookup shows it with the change's values
/// (amounts as amounts; numbers as their text).
fn verdict(orders: &[Map<String, Value>], pnm: &str, params: &[(&str, &str)]) -> Verdict {
    let Some(order) = orders
        .iter()
        .find(|o| o.get("pnm_order_identifier").and_then(Value::as_str) == Some(pnm))
        .or(orders.first().filter(|_| orders.len() == 1))
    else {
        return Verdict::CannotTell(format!("the lookup of order {pnm} did not return it"));
    };
    let mut hidden = Vec::new();
    for (name, wanted) in params.iter().filter(|(k, _)| *k != "pnm_order_identifier") {
        let shown = match order.get(*name) {
            None | Some(Value::Null) => {
                hidden.push(*name);
                continue;
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let same = match (shown.parse::<Amount>(), wanted.parse::<Amount>()) {
            (Ok(a), Ok(b)) if name.contains("amount") => a == b,
            _ => shown == *wanted,
        };
        if !same {
            return Verdict::NotApplied;
        }
    }
    if hidden.is_empty() {
        Verdict::Applied
    } else {
        Verdict::CannotTell(format!(
            "the provider's lookup does not show {}",
            hidden.join(", ")
        ))
    }
}

/// Leaves a change whose landing cannot be told to an operator.
async fn unknown(ctx: &RunContext, row: u64, why: &str, progress: &StageProgress) {
    ctx.write(Write::Unknown {
        row,
        code: CHANGE_UNVERIFIABLE.into(),
        message: format!(
            "change_order: the answer to the change was lost and {why}, so whether it was \
             applied cannot be told; it is not sent again (it could apply twice). Check the \
             order in PayNearMe's Business Portal; if the change is not there, run `change` \
             with this row alone"
        ),
    })
    .await;
    progress.inc(1);
}

/// The error code of a change whose landing cannot be told.
pub(crate) const CHANGE_UNVERIFIABLE: &str = "change_unverifiable";

/// Looks up the order and customer of `change` rows that name no customer
/// (run one at a time: two lookups at once could be for one customer), so
/// that the change stage can keep each customer's requests apart.
pub(crate) async fn resolve(ctx: &RunContext, group: Group, progress: &StageProgress) {
    for stored in group.rows {
        if stored.site_customer_identifier.is_some() || stored.pnm_customer_identifier.is_some() {
            continue;
        }
        let selector = match (&stored.pnm_order_identifier, &stored.site_order_identifier) {
            (Some(pnm), _) => ("pnm_order_identifier", pnm.clone()),
            (None, Some(site)) => ("site_order_identifier", site.clone()),
            (None, None) => continue,
        };
        let rows = [stored.row_number];
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                ctx.pnm().find_orders(selector.0, &selector.1).await
            })
            .await;
        match found {
            Outcome::Done(orders) => match orders.into_iter().find(|o| {
                o.pnm_order_identifier.is_some()
                    && match selector.0 {
                        "pnm_order_identifier" => {
                            o.pnm_order_identifier.as_deref() == Some(&selector.1)
                        }
                        _ => o.site_order_identifier.as_deref() == Some(&selector.1),
                    }
            }) {
                Some(order) => {
                    ctx.write(Write::Resolved {
                        row: stored.row_number,
                        pnm_order: order.pnm_order_identifier.unwrap_or_default(),
                        pnm_customer: order.pnm_customer_identifier,
                        site_customer: order.site_customer_identifier,
                    })
                    .await;
                }
                None => {
                    let error = ProviderError::Api {
                        endpoint: Endpoint::FindOrders.as_str(),
                        status: 404,
                        code: "order_not_found".into(),
                        description: format!("no order has {} `{}`", selector.0, selector.1),
                    };
                    fail(ctx, stored.row_number, &error, progress).await;
                }
            },
            Outcome::Failed(error) => fail(ctx, stored.row_number, &error, progress).await,
            Outcome::Stopped => return,
        }
    }
}
