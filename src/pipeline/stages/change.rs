//! `change_order`, exactly once per row.

use super::fail;
use crate::input::{Header, Row};
use crate::pipeline::context::{Ctx, Outcome};
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
pub(super) async fn change(
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
                    ctx.permit(Endpoint::FindOrders).await?;
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
                ctx.permit(Endpoint::FindOrders).await?;
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
            ctx.permit(Endpoint::ChangeOrder).await?;
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
