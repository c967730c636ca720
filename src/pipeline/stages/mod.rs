//! The work of each stage, one module per kind of work: create one order;
//! refresh URLs and issue smart tokens for a customer's orders, batched;
//! look orders up for `refresh`; change an order; retry a Commerce Engine
//! payment.

mod ce;
mod change;
pub(crate) mod create;
pub(crate) mod groups;
pub(crate) use ce::ce_retry;
pub(crate) use change::{change, resolve};
pub(crate) use groups::order_selector;
pub(crate) use lookup::lookup;
mod lookup;

use super::context::RunContext;
use super::progress::StageProgress;
use crate::provider::commerce_engine::PaymentInfo;
use crate::provider::paynearme::PnmOrder;
use crate::provider::ProviderError;
use crate::store::writer::{OrderFacts, PaymentFacts, Write};
use crate::store::StoredRow;

/// Most orders a customer-wide `refresh_embedded_js_urls` page returns.
pub const PAGE_LIMIT: usize = 5;

impl From<PnmOrder> for OrderFacts {
    fn from(order: PnmOrder) -> Self {
        OrderFacts {
            pnm_order_identifier: order.pnm_order_identifier,
            pnm_customer_identifier: order.pnm_customer_identifier,
            site_order_identifier: order.site_order_identifier,
            site_customer_identifier: order.site_customer_identifier,
            embedded_js_url: order.embedded_js_url,
            embedded_js_url_expires_at: order.embedded_js_url_expires_at,
        }
    }
}

impl From<PaymentInfo> for PaymentFacts {
    fn from(payment: PaymentInfo) -> Self {
        PaymentFacts {
            id: payment.id,
            status: payment.status,
            link: payment.link,
            link_expiry: payment.link_expiry,
        }
    }
}

/// A customer's rows that are ready for the same stage.
pub struct Group {
    pub customer: String,
    pub rows: Vec<StoredRow>,
    /// Every order the customer has at the provider is in this run (as
    /// the refresh pages showed): a customer-wide call touches nothing else.
    pub exclusive: bool,
}

/// `ORDERBATCH_FAILPOINT=panic-at-row:N`: the job of state row N panics
/// (for tests of what an internal error does to a run; unset in use).
pub(crate) fn failpoint_row() -> Option<u64> {
    static ROW: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *ROW.get_or_init(|| {
        std::env::var("ORDERBATCH_FAILPOINT")
            .ok()?
            .strip_prefix("panic-at-row:")?
            .parse()
            .ok()
    })
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(std::string::ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A job panicked: its rows fail with `internal_error` (a row whose request
/// may have left is reconciled when `orderbatch retry` sends it again),
/// and the rest of the run goes on.
pub async fn internal_error(
    ctx: &RunContext,
    rows: &[u64],
    what: String,
    progress: &StageProgress,
) {
    tracing::error!(
        rows = ?rows,
        "internal error while working on row {}: {what}; the row is marked failed \
         (please report this), the run goes on",
        rows.first().copied().unwrap_or_default()
    );
    let message = format!("orderbatch failed while working on this row: {what}");
    for &row in rows {
        record_failure(ctx, row, "internal_error".into(), message.clone(), progress).await;
    }
}

/// The row failed with `error` from the provider.
pub(super) async fn fail(
    ctx: &RunContext,
    row: u64,
    error: &ProviderError,
    progress: &StageProgress,
) {
    record_failure(ctx, row, error.code(), error.to_string(), progress).await;
}

/// The row failed with `code` (its `error_code`) and `message`.
async fn record_failure(
    ctx: &RunContext,
    row: u64,
    code: String,
    message: String,
    progress: &StageProgress,
) {
    ctx.row_failed();
    ctx.write(Write::Failed { row, code, message }).await;
    progress.inc(1);
}
