//! Commerce Engine `retry-payments`: check each order's payment status, then
//! re-issue its payment request once, honouring the 15-minute rule.

use std::sync::atomic::{AtomicBool, Ordering};

use super::fail;
use crate::input::{Header, Row};
use crate::pipeline::context::{Ctx, Outcome};
use crate::pipeline::progress::StageProgress;
use crate::provider::commerce_engine::{
    retry_time, PaymentInfo, PaymentMethod, PAYMENT_STATUS, RETRY_PAYMENT,
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
}

/// The row's `payment_method`: its own columns over the run's defaults.
fn method(ctx: &Ctx, header: &Header, row: &Row) -> PaymentMethod {
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
pub async fn ce_retry(
    ctx: &Ctx,
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
            ctx.permit(PAYMENT_STATUS).await?;
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
    let was_retrying = stored.state == RowState::Retrying.as_str();
    if was_retrying && !status.is_retry_available {
        return done(ctx, stored, Retried::Unrecorded, progress).await;
    }
    // A deferred row goes when the provider says its window is open (its
    // clock decides, not ours); until then it keeps its time.
    if stored.state == RowState::Deferred.as_str() && !status.is_retry_available {
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
    if !was_retrying
        && (ctx.shutdown.is_stopping() || !ctx.intent(stored.row_number, RowState::Retrying).await)
    {
        return;
    }
    let method = method(ctx, header, row);
    let maybe_applied = AtomicBool::new(false);
    let outcome = ctx
        .request(RETRY_PAYMENT, &rows, || async {
            if maybe_applied.load(Ordering::Relaxed) {
                ctx.permit(PAYMENT_STATUS).await?;
                let now = ce.payment_status(order).await?;
                if !now.is_retry_available {
                    return Ok(Retried::Unrecorded);
                }
                maybe_applied.store(false, Ordering::Relaxed);
            }
            ctx.permit(RETRY_PAYMENT).await?;
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

async fn done(ctx: &Ctx, stored: &StoredRow, retried: Retried, progress: &StageProgress) {
    let (payment, note) = match retried {
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
        payment,
        note,
    })
    .await;
    progress.inc(1);
}
