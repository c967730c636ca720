//! Commerce Engine `retry-payments`: check each order's payment status, then
//! re-issue its payment request once, honouring the 15-minute rule.

use std::sync::atomic::{AtomicBool, Ordering};

use super::fail;
use crate::input::{Header, Row};
use crate::pipeline::context::{Outcome, RunContext};
use crate::pipeline::progress::StageProgress;
use crate::provider::commerce_engine::{
    retry_time, Landed, PaymentInfo, PaymentMethod, PAYMENTS, PAYMENT_STATUS, RETRY_PAYMENT,
};
use crate::provider::{ErrorClass, ProviderError};
use crate::store::writer::Write;
use crate::store::{RowState, StoredRow};

/// Note on a row whose retry an interrupted run made.
const UNRECORDED: &str =
    "an interrupted run's retry went through; its payment link was not recorded (see the store's admin)";

/// How long a deferred row whose window the provider still keeps closed
/// waits before it is checked again.
const RECHECK_SECS: i64 = 30;

/// What a retry attempt came to.
enum Retried {
    New(PaymentInfo),
    /// An earlier attempt (whose answer was lost) made the payment request.
    Unrecorded,
    /// Whether an earlier attempt landed cannot be told: for an operator.
    Unknown(String),
}

/// Asks the order's payment attempts whether a retry sent since
/// `intent_at` landed.
async fn landed(ctx: &RunContext, order: &str, intent_at: i64, rows: &[u64]) -> Outcome<Landed> {
    ctx.request(PAYMENTS, rows, || async {
        let _slot = ctx.permit(PAYMENTS).await?;
        ctx.ce().retry_landed(order, intent_at).await
    })
    .await
}

/// The row's `payment_method`: its own columns over the run's defaults.
fn method(ctx: &RunContext, header: &Header, row: &Row) -> PaymentMethod {
    let column = |name: &str| {
        header
            .index(name)
            .and_then(|i| row.get(i))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let d = &ctx.payment_defaults;
    PaymentMethod {
        payment_provider_slug: column("payment_provider_slug").or(d.payment_provider_slug.clone()),
        integration_type: column("integration_type").or(d.integration_type.clone()),
        return_url: column("return_url").or(d.return_url.clone()),
        action: column("action").or(d.action.clone()),
        gateway_reference_id: column("gateway_reference_id").or(d.gateway_reference_id.clone()),
    }
}

/// One order: paid → skipped; a retry an interrupted run made → done; a
/// deferred row whose window is still closed → left as it is; otherwise
/// retry now, or defer to the time a too-early answer names.
pub(crate) async fn ce_retry(
    ctx: &RunContext,
    header: &Header,
    row: &Row,
    stored: &StoredRow,
    progress: &StageProgress,
) {
    let Some(order) = stored.site_order_identifier.as_deref() else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    let rows = [stored.row_number];
    let ce = ctx.ce();
    let status = match ctx
        .request(PAYMENT_STATUS, &rows, || async {
            let _slot = ctx.permit(PAYMENT_STATUS).await?;
            ce.payment_status(order).await
        })
        .await
    {
        Outcome::Done(status) => status,
        Outcome::Failed(error) => return fail(ctx, stored.row_number, &error, progress).await,
        Outcome::Stopped => return,
    };
    if status.status == "success" {
        ctx.write(Write::Skipped {
            row: stored.row_number,
            code: "already_paid".into(),
            message: "the order is paid; no retry".into(),
        })
        .await;
        progress.inc(1);
        return;
    }
    // A killed run may have sent a retry after recording its intent: the
    // order's payment attempts decide, not whether a retry is allowed now
    // (the window may have reopened since).
    if stored.state == RowState::Retrying {
        let Some(intent_at) = stored.intent_at else {
            let why =
                "an interrupted run's retry intent has no time; check the order's payments in \
                       the store's admin";
            return done(ctx, stored, Retried::Unknown(why.into()), progress).await;
        };
        match landed(ctx, order, intent_at, &rows).await {
            Outcome::Done(Landed::Yes) => {
                return done(ctx, stored, Retried::Unrecorded, progress).await
            }
            Outcome::Done(Landed::Unknown(why)) => {
                return done(ctx, stored, Retried::Unknown(why), progress).await
            }
            Outcome::Done(Landed::No) => {}
            Outcome::Failed(error) => return fail(ctx, stored.row_number, &error, progress).await,
            Outcome::Stopped => return,
        }
    }
    // A deferred row goes when the provider says its window is open (its
    // clock decides, not ours); until then it keeps its time. An answer
    // that does not say is not a yes.
    let available = status.is_retry_available == Some(true);
    if stored.state == RowState::Deferred && !available {
        if stored.next_attempt_at.is_none_or(|t| t <= now) {
            // Our time came but the provider's did not: ask again shortly.
            ctx.write(Write::Deferred {
                row: stored.row_number,
                until: now + RECHECK_SECS,
                message: stored.last_error.clone().unwrap_or_default(),
            })
            .await;
        }
        return;
    }
    // Before the intent: a landed retry's payment is never older than it.
    let intent_at = chrono::Utc::now().timestamp();
    if ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Retrying).await {
        return;
    }
    let method = method(ctx, header, row);
    let maybe_applied = AtomicBool::new(false);
    let outcome = ctx
        .request(RETRY_PAYMENT, &rows, || async {
            if maybe_applied.load(Ordering::Relaxed) {
                let _slot = ctx.permit(PAYMENTS).await?;
                match ce.retry_landed(order, intent_at).await? {
                    Landed::Yes => return Ok(Retried::Unrecorded),
                    Landed::Unknown(why) => return Ok(Retried::Unknown(why)),
                    Landed::No => maybe_applied.store(false, Ordering::Relaxed),
                }
            }
            let _slot = ctx.permit(RETRY_PAYMENT).await?;
            let result = ce.retry_payment(order, &method).await;
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
            result.map(Retried::New)
        })
        .await;
    match outcome {
        Outcome::Done(retried) => done(ctx, stored, retried, progress).await,
        Outcome::Failed(ProviderError::Api {
            code, description, ..
        }) if code == "retry_too_early" => {
            let until = retry_time(&description)
                .map(|t| t.timestamp())
                .unwrap_or(now + 15 * 60);
            ctx.write(Write::Deferred {
                row: stored.row_number,
                until,
                message: description,
            })
            .await;
        }
        Outcome::Failed(ProviderError::Api {
            code, description, ..
        }) if code == "already_paid" => {
            ctx.write(Write::Skipped {
                row: stored.row_number,
                code,
                message: description,
            })
            .await;
            progress.inc(1);
        }
        Outcome::Failed(error) => fail(ctx, stored.row_number, &error, progress).await,
        Outcome::Stopped => {}
    }
}

async fn done(ctx: &RunContext, stored: &StoredRow, retried: Retried, progress: &StageProgress) {
    let (payment, note) = match retried {
        Retried::Unknown(why) => {
            ctx.write(Write::Unknown {
                row: stored.row_number,
                code: "retry_unknown".into(),
                message: why,
            })
            .await;
            progress.inc(1);
            return;
        }
        Retried::New(payment) => (payment, None),
        Retried::Unrecorded => (
            PaymentInfo {
                status: Some("pending".into()),
                ..PaymentInfo::default()
            },
            Some(UNRECORDED.to_string()),
        ),
    };
    ctx.write(Write::Retried {
        row: stored.row_number,
        payment: payment.into(),
        note,
    })
    .await;
    progress.inc(1);
}
