//! What `orderbatch serve` reads and writes: one order's identifiers, URL
//! and token, by `site_order_identifier`, in short transactions beside a
//! run that may be writing the same database.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// An order as the database last recorded it (the newest run's row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedOrder {
    pub run_id: i64,
    pub row_number: u64,
    pub site_order_identifier: String,
    pub pnm_order_identifier: String,
    pub site_customer_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    pub embedded_js_url: Option<String>,
    pub embedded_js_url_expires_at: Option<String>,
}

impl Store {
    /// How long a statement waits for another connection's lock before it
    /// fails busy (serve keeps this short: a caller gets a quick 503).
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(timeout).map_err(|e| self.err(e))
    }

    /// The newest row that knows the order of `site_order_identifier`, with
    /// its customer as the store knows it (see migration 06).
    pub fn served_order(
        &self,
        site_order_identifier: &str,
    ) -> Result<Option<ServedOrder>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT r.run_id, r.row_number, r.pnm_order_identifier,
                        COALESCE(r.site_customer_identifier, o.site_customer_identifier),
                        COALESCE(r.pnm_customer_identifier, o.pnm_customer_identifier),
                        r.embedded_js_url, r.embedded_js_url_expires_at
                 FROM rows r LEFT JOIN orders o ON o.pnm_order_identifier = r.pnm_order_identifier
                 WHERE r.site_order_identifier = ?1 AND r.pnm_order_identifier IS NOT NULL
                 ORDER BY r.run_id DESC, r.row_number DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![site_order_identifier], |r| {
                    Ok(ServedOrder {
                        run_id: r.get(0)?,
                        row_number: r.get(1)?,
                        site_order_identifier: site_order_identifier.to_string(),
                        pnm_order_identifier: r.get(2)?,
                        site_customer_identifier: r.get(3)?,
                        pnm_customer_identifier: r.get(4)?,
                        embedded_js_url: r.get(5)?,
                        embedded_js_url_expires_at: r.get(6)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))
    }

    /// Records a URL the provider just issued for the order's row.
    pub fn set_served_url(
        &self,
        order: &ServedOrder,
        url: &str,
        expires_at: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE rows SET embedded_js_url = ?3,
                     embedded_js_url_expires_at = COALESCE(?4, embedded_js_url_expires_at)
                 WHERE run_id = ?1 AND row_number = ?2",
            )
            .and_then(|mut s| s.execute(params![order.run_id, order.row_number, url, expires_at]))
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Records a smart token the provider just issued for the order's row.
    pub fn set_served_token(
        &self,
        order: &ServedOrder,
        token: &str,
        link: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE rows SET secure_smart_token = ?3, secure_smart_link = ?4
                 WHERE run_id = ?1 AND row_number = ?2",
            )
            .and_then(|mut s| s.execute(params![order.run_id, order.row_number, token, link]))
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

impl StoreError {
    /// Whether another connection held the lock past the busy timeout.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        )
    }
}
