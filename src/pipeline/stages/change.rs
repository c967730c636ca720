//! `change_order`, exactly once per row.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use super::{fail, Group};
use crate::input::{Header, Row};
use crate::pipeline::context::{Outcome, RunContext};
use crate::pipeline::progress::StageProgress;
use crate::provider::paynearme::params::ep;
use crate::provider::paynearme::Endpoint;
use crate::provider::{ErrorClass, ProviderError};
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Changes the row's order once: the order is found by
/// `site_order_identifier` when the row has no `pnm_order_identifier`; intent
/// is committed before the change leaves, and a change whose outcome is
/// unknown (a killed run's) is checked against the order before it is resent.
pub(super) async fn change(
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
        // every value, it was applied.
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                ctx.pnm()
                    .find_orders_raw("pnm_order_identifier", &pnm)
                    .await
            })
            .await;
        match found {
            Outcome::Done(orders) => {
                if applied(&orders, &params) {
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
    // An attempt whose outcome is unknown (dropped connection, timeout,
    // 5xx) may have been applied: the order is compared before a resend.
    let maybe_applied = AtomicBool::new(false);
    let outcome = ctx
        .request(Endpoint::ChangeOrder, &rows, || async {
            if maybe_applied.load(Ordering::Relaxed) {
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                let orders = ctx
                    .pnm()
                    .find_orders_raw("pnm_order_identifier", &pnm)
                    .await?;
                if applied(&orders, &params) {
                    tracing::info!(
                        row = stored.row_number,
                        "the change an unanswered attempt sent was applied; not sending it again"
                    );
                    return Ok(());
                }
                maybe_applied.store(false, Ordering::Relaxed);
            }
            let _slot = ctx.permit(Endpoint::ChangeOrder).await?;
            let result = ctx.pnm().change_order(&params).await;
            if let Err(e) = &result {
                if matches!(
                    e.class(),
                    ErrorClass::Transient {
                        maybe_applied: true
                    }
                ) {
                    maybe_applied.store(true, Ordering::Relaxed);
                }
            }
            result
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

/// Whether one of `orders` already holds every value of the change (the
/// order identifier aside).
fn applied(orders: &[Map<String, Value>], params: &[(&str, &str)]) -> bool {
    orders.iter().any(|o| {
        params
            .iter()
            .filter(|(k, _)| *k != "pnm_order_identifier")
            .all(|(k, v)| o.get(*k).and_then(Value::as_str) == Some(*v))
    })
}

/// Looks up the order and customer of `change` rows that name no customer
/// (run one at a time: two lookups at once could be for one customer), so
/// that the change stage can keep each customer's requests apart.
pub(super) async fn resolve(ctx: &RunContext, group: Group, progress: &StageProgress) {
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
