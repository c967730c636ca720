//! `refresh`: find each row's orders, expanding customer rows.

use super::groups::{order_selector, refresh, GroupStage};
use super::{fail, Group, PAGE_LIMIT};
use crate::pipeline::context::{Outcome, RunContext, Unsettled};
use crate::pipeline::progress::StageProgress;
use crate::provider::paynearme::{Endpoint, PnmOrder};
use crate::store::writer::{OrderFacts, Write};
use crate::store::StoredRow;

/// `refresh`: finds each row's orders. A row naming a customer pages through
/// all its orders (`limit` 5) and expands into one row per order; rows
/// naming orders are refreshed like `run`'s, batched per customer when the
/// customer is known. With URLs off, orders are only looked up.
pub(crate) async fn lookup(ctx: &RunContext, group: Group, progress: &StageProgress) {
    let (order_rows, customer_rows): (Vec<StoredRow>, Vec<StoredRow>) = group
        .rows
        .into_iter()
        .partition(|r| order_selector(r).is_some());
    let expands = !customer_rows.is_empty();
    for row in customer_rows {
        let selector = match (&row.site_customer_identifier, &row.pnm_customer_identifier) {
            (Some(c), _) => ("site_customer_identifier", c.clone()),
            (None, Some(p)) => ("pnm_customer_identifier", p.clone()),
            (None, None) => continue,
        };
        let orders = match customer_orders(ctx, &row, &selector).await {
            Outcome::Done(orders) => orders,
            Outcome::Failed(error) => {
                fail(ctx, row.row_number, &error, progress).await;
                continue;
            }
            Outcome::Stopped => return,
        };
        let found = orders.len().max(1) as u64;
        ctx.write(Write::Expand {
            parent: row.row_number,
            orders: orders.into_iter().map(Into::into).collect(),
        })
        .await;
        // Every order of the customer is now a row of this run.
        if let Some(customer) = &row.site_customer_identifier {
            ctx.write(Write::Customer {
                customer: customer.clone(),
                exclusive: true,
            })
            .await;
        }
        progress.inc(found);
    }
    if order_rows.is_empty() {
        return;
    }
    if !ctx.options.urls {
        for row in order_rows {
            let order = OrderFacts {
                pnm_order_identifier: row.pnm_order_identifier.clone(),
                site_order_identifier: row.site_order_identifier.clone(),
                ..OrderFacts::default()
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
    // Customer-wide pages would regenerate (with --force) the URLs of the
    // customer's orders that this run does not name: only when a customer
    // row of the group names them all, or without --force (the provider
    // then regenerates only expired URLs).
    let may_page = expands || !ctx.options.refresh.iter().any(|(k, _)| k == "force");
    refresh(
        ctx,
        Group {
            customer: group.customer,
            rows: order_rows,
            exclusive: false,
        },
        may_page,
        progress,
    )
    .await;
}

/// Every order of a customer: pages of five through
/// `refresh_embedded_js_urls` (or one `find_orders` with URLs off).
async fn customer_orders(
    ctx: &RunContext,
    row: &StoredRow,
    selector: &(&'static str, String),
) -> Outcome<Vec<PnmOrder>> {
    let rows = [row.row_number];
    if !ctx.options.urls {
        let found = ctx
            .request(Endpoint::FindOrders, &rows, || async {
                let _slot = ctx.permit(Endpoint::FindOrders).await?;
                ctx.pnm().find_orders(selector.0, &selector.1).await
            })
            .await;
        return found;
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
        let unsettled = Unsettled::default();
        match ctx
            .request(Endpoint::RefreshEmbeddedJsUrls, &rows, || {
                GroupStage::Refresh.call(ctx, &params, &unsettled)
            })
            .await
        {
            Outcome::Done(page) => {
                let short = page.len() < PAGE_LIMIT;
                all.extend(page);
                if short {
                    return Outcome::Done(all);
                }
            }
            Outcome::Failed(error) => return Outcome::Failed(error),
            Outcome::Stopped => return Outcome::Stopped,
        }
    }
}
