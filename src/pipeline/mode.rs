//! What each command does with its rows: which columns its input takes,
//! how a row is checked, and which stages the rows go through.

use serde::{Deserialize, Serialize};

use crate::input::reader::Schema;
use crate::input::validate::{check_row, Rejection};
use crate::input::{ColumnOptions, Header, Row};
use crate::provider::paynearme::params::{ep, CREATE_REQUIRED};
use crate::store::runs::commands;
use crate::store::{Requeue, RowState};

/// Columns that name existing orders, in the order `refresh` prefers them.
pub const SELECTORS: [&str; 4] = [
    "pnm_order_identifier",
    "site_order_identifier",
    "pnm_customer_identifier",
    "site_customer_identifier",
];

/// The command a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Create orders, refresh their URLs, issue smart tokens.
    Run,
    /// Orders that already exist: regenerate URLs (unless `urls` is off)
    /// and issue smart tokens (unless `tokens` is off).
    Refresh {
        force: bool,
        urls: bool,
        tokens: bool,
    },
    /// Change existing orders.
    Change,
    /// Commerce Engine: re-issue payment requests; rows whose window opens
    /// within `max_wait_secs` of the start are waited for.
    CeRetry { max_wait_secs: u64 },
}

/// A stage: the rows it takes and the work it does on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Create,
    Change,
    /// `change` and `refresh`: look up the order and customer of rows that
    /// name an order the store has never seen and no customer, one at a
    /// time, so that the rest can go by customer.
    Resolve,
    /// `refresh`: expand each row naming a customer into the customer's
    /// orders, refreshing their URLs.
    Expand,
    /// `refresh`: refresh the URLs of rows naming orders (after every
    /// customer row is expanded, so an order named both ways ends up with
    /// the values issued last).
    Lookup,
    Refresh,
    Token,
    /// Commerce Engine payment status, then retry-payment.
    CeRetry,
}

impl Stage {
    /// The name shown in progress and reports.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Create => "create_order",
            Stage::Change => "change_order",
            Stage::Resolve => "find_orders (customers)",
            Stage::Expand => "refresh_embedded_js_urls (customers)",
            Stage::Lookup | Stage::Refresh => "refresh_embedded_js_urls",
            Stage::Token => "get_smart_token",
            Stage::CeRetry => "retry-payment",
        }
    }

    /// The row states the stage works on.
    pub fn takes(self) -> &'static [RowState] {
        match self {
            Stage::Create => &[RowState::Pending, RowState::Creating],
            Stage::Change => &[RowState::Pending, RowState::Changing],
            Stage::Resolve => &[RowState::Pending],
            Stage::Expand | Stage::Lookup => &[RowState::Pending],
            Stage::Refresh => &[RowState::Created],
            Stage::Token => &[RowState::UrlsRefreshed],
            Stage::CeRetry => &[RowState::Pending, RowState::Retrying, RowState::Deferred],
        }
    }
}

impl Mode {
    /// The command name runs are stored under.
    pub fn command(self) -> &'static str {
        match self {
            Mode::Run => commands::RUN,
            Mode::Refresh { .. } => commands::REFRESH,
            Mode::Change => commands::CHANGE,
            Mode::CeRetry { .. } => commands::CE_RETRY_PAYMENTS,
        }
    }

    /// The header the command accepts.
    pub fn schema(self, columns: &ColumnOptions) -> Schema<'_> {
        let (endpoints, required): (u8, &'static [&'static str]) = match self {
            Mode::Run => (ep::CREATE | ep::TOKEN_ROW, CREATE_REQUIRED),
            // The four selectors and the per-row token columns.
            Mode::Refresh { .. } => (ep::TOKEN, &[]),
            Mode::Change => (ep::CHANGE | ep::FIND, &[]),
            Mode::CeRetry { .. } => (ep::CE_RETRY, &["order_number"]),
        };
        Schema {
            endpoints,
            required,
            columns,
        }
    }

    /// The stages, in order.
    pub fn stages(self) -> &'static [Stage] {
        match self {
            Mode::Run => &[Stage::Create, Stage::Refresh, Stage::Token],
            Mode::Refresh { tokens: true, .. } => {
                &[Stage::Resolve, Stage::Expand, Stage::Lookup, Stage::Token]
            }
            Mode::Refresh { tokens: false, .. } => &[Stage::Resolve, Stage::Expand, Stage::Lookup],
            Mode::Change => &[Stage::Resolve, Stage::Change],
            Mode::CeRetry { .. } => &[Stage::CeRetry],
        }
    }

    /// Where `orderbatch retry` puts this command's failed rows back: a
    /// state one of its stages takes, chosen so that a request that may
    /// have been acted on is checked before it is sent again.
    pub fn requeue(self) -> Requeue {
        use RowState::*;
        let all = |state| Requeue {
            no_order: state,
            order: state,
            urls: state,
            attempted: None,
        };
        match self {
            // Creating: looked up before it is created again.
            Mode::Run => Requeue {
                no_order: Creating,
                order: Created,
                urls: UrlsRefreshed,
                attempted: None,
            },
            Mode::Refresh { .. } => Requeue {
                urls: UrlsRefreshed,
                ..all(Pending)
            },
            // Changing: the order is compared before the change is resent.
            Mode::Change => all(Changing),
            // Retrying: the payment status is read before a retry is resent.
            Mode::CeRetry { .. } => Requeue {
                attempted: Some((crate::provider::commerce_engine::RETRY_PAYMENT, Retrying)),
                ..all(Pending)
            },
        }
    }

    /// Whether a repeated `site_order_identifier` is rejected.
    pub fn unique_order_ids(self) -> bool {
        matches!(self, Mode::Run | Mode::Change | Mode::CeRetry { .. })
    }

    /// Checks one row for this command.
    pub fn check(self, header: &Header, row: &Row) -> Result<(), Rejection> {
        check_row(header, row, self.schema(&ColumnOptions::default()).required)?;
        if let Mode::CeRetry { .. } = self {
            return Ok(());
        }
        let has = |name: &str| {
            header
                .index(name)
                .and_then(|i| row.get(i))
                .is_some_and(|v| !v.is_empty())
        };
        let missing = |names: &[&str]| Rejection {
            column: None,
            reason: format!("names no order: fill in one of {}", names.join(", ")),
        };
        match self {
            Mode::Run | Mode::CeRetry { .. } => Ok(()),
            Mode::Refresh { .. } if SELECTORS.iter().any(|s| has(s)) => Ok(()),
            Mode::Refresh { .. } => Err(missing(&SELECTORS)),
            Mode::Change if has(SELECTORS[0]) || has(SELECTORS[1]) => Ok(()),
            Mode::Change => Err(missing(&SELECTORS[..2])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [Mode; 6] = [
        Mode::Run,
        Mode::Refresh {
            force: false,
            urls: true,
            tokens: true,
        },
        Mode::Refresh {
            force: true,
            urls: false,
            tokens: true,
        },
        Mode::Refresh {
            force: false,
            urls: true,
            tokens: false,
        },
        Mode::Change,
        Mode::CeRetry { max_wait_secs: 0 },
    ];

    /// The non-final states a mode's own work leaves rows in: registration
    /// (`pending`, and for `run` the adopted `created` / looked-up
    /// `creating`), each stage's intent and outcome.
    fn written(mode: Mode) -> Vec<RowState> {
        use RowState::*;
        match mode {
            Mode::Run => vec![Pending, Creating, Created, UrlsRefreshed],
            Mode::Refresh { .. } => vec![Pending, UrlsRefreshed],
            Mode::Change => vec![Pending, Changing],
            Mode::CeRetry { .. } => vec![Pending, Retrying, Deferred],
        }
    }

    #[test]
    fn every_state_a_mode_or_its_retry_leaves_is_taken_by_one_of_its_stages() {
        for mode in MODES {
            let requeue = mode.requeue();
            let mut states = written(mode);
            states.extend([requeue.no_order, requeue.order, requeue.urls]);
            states.extend(requeue.attempted.map(|(_, s)| s));
            for state in states {
                assert!(!state.is_final(), "{mode:?} {state:?}");
                let taken = mode.stages().iter().any(|s| s.takes().contains(&state));
                // refresh --no-token moves every `urls_refreshed` row to
                // `done` once its lookups are through.
                let moved = matches!(mode, Mode::Refresh { tokens: false, .. })
                    && state == RowState::UrlsRefreshed;
                assert!(
                    taken || moved,
                    "{mode:?} leaves rows in {state:?}, which no stage takes"
                );
            }
        }
    }
}
