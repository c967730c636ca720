//! Row checks: every field is checked against the parameter table before any
//! request, so a bad row never reaches the provider.

use chrono::{NaiveDate, NaiveDateTime};

use super::reader::{Header, Row};
use crate::money::Amount;
use crate::provider::paynearme::params::Rule;

/// Why a row was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The column at fault, when one is.
    pub column: Option<String>,
    pub reason: String,
}

impl Rejection {
    /// A short code for grouping and for the state database:
    /// `invalid_<column>`, or `malformed_row` for a row-wide problem.
    pub fn code(&self) -> String {
        match &self.column {
            Some(c) => format!("invalid_{c}"),
            None => "malformed_row".to_string(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "{c}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn reject(column: &str, reason: impl Into<String>) -> Rejection {
    Rejection {
        column: Some(column.to_string()),
        reason: reason.into(),
    }
}

/// Checks one row: field count, UTF-8, required fields, each known field's
/// rule, and the rules that span fields.
pub fn check_row(header: &Header, row: &Row, required: &[&str]) -> Result<(), Rejection> {
    if row.len() != header.names.len() {
        return Err(Rejection {
            column: None,
            reason: format!(
                "row has {} fields but the header has {} columns (a missing or extra comma, or an unquoted comma inside a value?)",
                row.len(),
                header.names.len()
            ),
        });
    }
    if !row.is_utf8() {
        let bad = (0..row.len())
            .find(|&i| row.raw(i).is_some_and(|b| std::str::from_utf8(b).is_err()))
            .unwrap_or(0);
        return Err(reject(
            &header.names[bad],
            "is not valid UTF-8 (save the file as UTF-8, not Latin-1 or Windows-1252)",
        ));
    }
    for (i, name) in header.names.iter().enumerate() {
        let value = row.get(i).unwrap_or_default();
        if value.is_empty() {
            if required.contains(&name.as_str()) {
                return Err(reject(name, "is required but empty"));
            }
            continue;
        }
        if let Some(param) = header.params[i] {
            check_value(param.rule, value).map_err(|reason| {
                // Rejection reasons are stored and exported: a customer's
                // personal data is never quoted in them.
                let reason = if param.pii {
                    reason.replace(&format!("`{value}`"), "the value")
                } else {
                    reason
                };
                reject(name, reason)
            })?;
        }
    }
    check_cross_fields(header, row)
}

fn check_cross_fields(header: &Header, row: &Row) -> Result<(), Rejection> {
    let field = |i: Option<usize>| i.and_then(|i| row.get(i)).filter(|v| !v.is_empty());
    let cross = &header.cross;
    if let (Some(min), Some(amount)) = (
        field(cross.minimum_payment_amount),
        field(cross.order_amount),
    ) {
        if let (Ok(min), Ok(amount)) = (min.parse::<Amount>(), amount.parse::<Amount>()) {
            if min > amount {
                return Err(reject(
                    "minimum_payment_amount",
                    format!("{min} is more than order_amount {amount}"),
                ));
            }
        }
    }
    for &(s, e, start, end) in &cross.date_ranges {
        if let (Some(s), Some(e)) = (field(Some(s)), field(Some(e))) {
            let date = |v: &str| {
                if v.contains('/') {
                    us_date(v).ok()
                } else {
                    NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()
                }
            };
            if let (Some(s), Some(e)) = (date(s), date(e)) {
                if e < s {
                    return Err(reject(end, format!("is before {start}")));
                }
            }
        }
    }
    Ok(())
}

fn us_date(value: &str) -> Result<NaiveDate, String> {
    let ok_shape = value.len() == 10
        && value.bytes().enumerate().all(|(i, b)| {
            if i == 2 || i == 5 {
                b == b'/'
            } else {
                b.is_ascii_digit()
            }
        });
    if !ok_shape {
        return Err(format!("`{value}` is not a date in MM/DD/YYYY format"));
    }
    NaiveDate::parse_from_str(value, "%m/%d/%Y")
        .map_err(|_| format!("`{value}` is not a real calendar date (MM/DD/YYYY)"))
}

fn digits_shape(value: &str, shape: &str) -> bool {
    value.len() == shape.len()
        && value.bytes().zip(shape.bytes()).all(|(v, s)| {
            if s == b'9' {
                v.is_ascii_digit()
            } else {
                v == s
            }
        })
}

/// Checks one value against its rule; the error says what is wrong.
pub fn check_value(rule: Rule, value: &str) -> Result<(), String> {
    match rule {
        Rule::Text => Ok(()),
        Rule::Identifier => match value.chars().find(|c| c.is_control() || *c == '\u{feff}') {
            None => Ok(()),
            Some(c) => Err(format!(
                "holds {} (U+{:04X}); identifiers are sent and stored as they are, so clean the file first",
                match c {
                    '\u{feff}' => "a byte-order mark",
                    '\0' => "a NUL byte",
                    '\r' | '\n' => "a line break",
                    '\t' => "a tab",
                    _ => "a control character",
                },
                c as u32
            )),
        },
        Rule::Amount => value
            .parse::<Amount>()
            .map(|_| ())
            .map_err(|e| format!("`{value}` {e}")),
        Rule::Currency => one_of(value, &["USD"]),
        Rule::Bool => one_of(value, &["true", "false"]),
        Rule::OrderType => one_of(value, &["exact", "up-to", "any"]),
        Rule::OneOf(allowed) => one_of(value, allowed),
        Rule::PositiveInt => match value.parse::<u64>() {
            Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(format!("`{value}` is not a positive whole number")),
        },
        Rule::Count => match value.parse::<u64>() {
            Ok(_) if value.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(format!("`{value}` is not a whole number")),
        },
        Rule::DateTimeTz => {
            let shape_ok = value.len() == 22 && digits_shape(&value[..19], "9999-99-99 99:99:99");
            let tz = value.get(19..).unwrap_or("");
            if !shape_ok || ![" ET", " CT", " MT", " PT"].contains(&tz) {
                return Err(format!(
                    "`{value}` is not `YYYY-MM-DD HH:MM:SS TZ` with TZ one of ET, CT, MT, PT"
                ));
            }
            NaiveDateTime::parse_from_str(&value[..19], "%Y-%m-%d %H:%M:%S")
                .map(|_| ())
                .map_err(|_| format!("`{value}` is not a real date and time"))
        }
        Rule::UsDate => us_date(value).map(|_| ()),
        Rule::IsoDate => {
            if !digits_shape(value, "9999-99-99") {
                return Err(format!("`{value}` is not a date in YYYY-MM-DD format"));
            }
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map(|_| ())
                .map_err(|_| format!("`{value}` is not a real calendar date"))
        }
        Rule::State => {
            if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(())
            } else {
                Err(format!(
                    "`{value}` is not a two-letter state abbreviation like TX"
                ))
            }
        }
        Rule::Year => match value.parse::<u32>() {
            Ok(y) if value.len() == 4 && (1900..=2025).contains(&y) => Ok(()),
            _ => Err(format!(
                "`{value}` is not a four-digit year of birth between 1900 and 2025"
            )),
        },
        Rule::Email => {
            let plausible = value.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            }) && !value.chars().any(char::is_whitespace);
            if plausible {
                Ok(())
            } else {
                Err(format!("`{value}` is not a plausible e-mail address"))
            }
        }
        Rule::Phone => {
            let allowed = value
                .chars()
                .all(|c| c.is_ascii_digit() || "+-(). ".contains(c));
            let digits = value.chars().filter(char::is_ascii_digit).count();
            if allowed && (10..=15).contains(&digits) {
                Ok(())
            } else {
                Err(format!(
                    "`{value}` is not a plausible phone number (10 to 15 digits)"
                ))
            }
        }
    }
}

fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let hint = allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value.trim()))
        .map(|a| format!("; did you mean `{a}`?"))
        .unwrap_or_default();
    Err(format!(
        "`{value}` is not one of {}{hint}",
        allowed
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rule: Rule, values: &[&str]) {
        for v in values {
            assert_eq!(check_value(rule, v), Ok(()), "{rule:?} should accept {v:?}");
        }
    }

    fn bad(rule: Rule, values: &[&str]) {
        for v in values {
            assert!(
                check_value(rule, v).is_err(),
                "{rule:?} should reject {v:?}"
            );
        }
    }

    #[test]
    fn amounts() {
        ok(Rule::Amount, &["8", "8.5", "8.50", "0"]);
        bad(Rule::Amount, &["12.345", "abc", "-5", "1e3"]);
    }

    #[test]
    fn enums_are_exact_and_suggest_case_fixes() {
        ok(Rule::OrderType, &["exact", "up-to", "any"]);
        bad(Rule::OrderType, &["EXACT", "upto", ""]);
        let err = check_value(Rule::OrderType, "EXACT").unwrap_err();
        assert!(err.contains("did you mean `exact`?"), "{err}");
        ok(Rule::Bool, &["true", "false"]);
        bad(Rule::Bool, &["True", "1", "yes"]);
        ok(Rule::Currency, &["USD"]);
        bad(Rule::Currency, &["usd", "EUR"]);
    }

    #[test]
    fn dates_and_times() {
        ok(
            Rule::DateTimeTz,
            &["2026-12-31 23:59:59 PT", "2024-02-29 00:00:00 ET"],
        );
        bad(
            Rule::DateTimeTz,
            &[
                "2026-02-30 10:00:00 ET",
                "2026-12-31 24:00:00 ET",
                "2026-12-31 10:00:00 UTC",
                "2026-12-31T10:00:00 ET",
            ],
        );
        ok(Rule::UsDate, &["01/31/2026", "02/29/2024"]);
        bad(Rule::UsDate, &["2026-01-31", "1/31/2026", "02/30/2026"]);
    }

    #[test]
    fn numbers_states_years_contacts() {
        ok(Rule::PositiveInt, &["1", "30"]);
        bad(Rule::PositiveInt, &["0", "-1", "1.5", "+3"]);
        ok(Rule::State, &["TX", "NY"]);
        bad(Rule::State, &["Texas", "tx", "T"]);
        ok(Rule::Year, &["1980"]);
        bad(Rule::Year, &["80", "1800", "3000"]);
        ok(Rule::Email, &["ana@example.com"]);
        bad(Rule::Email, &["ana", "ana@example", "a b@example.com"]);
        ok(Rule::Phone, &["+1 (555) 123-4567", "5551234567"]);
        bad(Rule::Phone, &["123", "555-CALL-NOW"]);
    }
}

#[cfg(test)]
mod row_tests {
    use super::*;
    use crate::provider::paynearme::params::{self, CREATE_REQUIRED};

    const BASE: &[(&str, &str)] = &[
        ("site_customer_identifier", "C1"),
        ("order_amount", "10.00"),
        ("order_currency", "USD"),
        ("order_type", "exact"),
        ("order_is_standing", "true"),
    ];

    /// Checks a row made of the base fields plus `extra` (which may override).
    fn check(extra: &[(&str, &str)]) -> Result<(), Rejection> {
        let mut fields: Vec<(&str, &str)> = BASE.to_vec();
        for (k, v) in extra {
            match fields.iter_mut().find(|(name, _)| name == k) {
                Some(f) => f.1 = v,
                None => fields.push((k, v)),
            }
        }
        let header = Header::new(
            fields.iter().map(|(k, _)| k.to_string()).collect(),
            fields.iter().map(|(k, _)| params::find(k)).collect(),
            vec![true; fields.len()],
        );
        let row = Row::new(
            1,
            2,
            csv::ByteRecord::from(fields.iter().map(|(_, v)| *v).collect::<Vec<_>>()),
        );
        check_row(&header, &row, CREATE_REQUIRED)
    }

    #[test]
    fn each_field_rule_accepts_and_rejects() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "order_amount",
                &["8", "8.5", "8.50"],
                &["12.345", "abc", "-5", "1e3", ""],
            ),
            ("order_currency", &["USD"], &["EUR", "usd"]),
            ("order_type", &["exact", "up-to", "any"], &["EXACT", "upto"]),
            (
                "order_is_standing",
                &["true", "false"],
                &["TRUE", "yes", ""],
            ),
            ("site_customer_identifier", &["C-9"], &[""]),
            ("order_duration", &["1", "30"], &["0", "-3", "2.5", "x"]),
            (
                "order_expiration_date",
                &["2026-12-31 23:59:59 ET"],
                &[
                    "2026-02-30 10:00:00 PT",
                    "2026-12-31 10:00:00 UTC",
                    "31/12/2026",
                ],
            ),
            (
                "auto_pay_start_date",
                &["12/01/2026"],
                &["2026-12-01", "13/01/2026"],
            ),
            ("site_customer_language", &["en", "sp"], &["es", "EN"]),
            (
                "auto_pay_frequency",
                &["weekly", "twice_monthly", "end_of_month"],
                &["daily", "Weekly"],
            ),
            ("reminder_frequency", &["monthly"], &["yearly"]),
            (
                "reminder_status",
                &["active", "user_suspended"],
                &["paused"],
            ),
            ("auto_pay_status", &["pending", "complete"], &["done"]),
            ("sort_payments", &["asc", "desc"], &["ascending"]),
            ("site_customer_state", &["TX"], &["Texas", "tx"]),
            (
                "site_customer_year_of_birth",
                &["1985"],
                &["85", "1850", "2999"],
            ),
            (
                "site_customer_email",
                &["a.b@example.com"],
                &["a.b", "a@b", "a @b.com"],
            ),
            (
                "site_customer_phone",
                &["(555) 123-4567", "+1 555 123 4567"],
                &["555", "call me"],
            ),
            (
                "minimum_payment_amount",
                &["5", "10.00"],
                &["10.01", "1.234"],
            ),
            ("return_minimal_info", &["true"], &["1"]),
            ("max_ppas", &["0", "3"], &["-1"]),
            ("payments_start_date", &["2026-01-31"], &["01/31/2026"]),
        ];
        for (column, good, bad) in cases {
            for value in *good {
                assert_eq!(
                    check(&[(column, value)]),
                    Ok(()),
                    "{column}={value:?} should pass"
                );
            }
            for value in *bad {
                let err = check(&[(column, value)])
                    .expect_err(&format!("{column}={value:?} should fail"));
                assert_eq!(
                    err.column.as_deref(),
                    Some(*column),
                    "{column}={value:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn reasons_never_quote_personal_data() {
        let err = check(&[("site_customer_email", "ana.secret@@example")]).unwrap_err();
        assert!(!err.reason.contains("ana.secret"), "{err}");
        assert!(err.reason.contains("not a plausible e-mail"), "{err}");
        let err = check(&[("order_amount", "12.345")]).unwrap_err();
        assert!(
            err.reason.contains("12.345"),
            "non-personal values are quoted: {err}"
        );
    }

    #[test]
    fn autopay_end_must_not_be_before_start() {
        let ok = check(&[
            ("auto_pay_start_date", "01/01/2026"),
            ("auto_pay_end_date", "01/01/2026"),
        ]);
        assert_eq!(ok, Ok(()));
        let err = check(&[
            ("auto_pay_start_date", "02/01/2026"),
            ("auto_pay_end_date", "01/31/2026"),
        ])
        .unwrap_err();
        assert_eq!(err.column.as_deref(), Some("auto_pay_end_date"));
        assert!(err.reason.contains("before auto_pay_start_date"));
    }

    #[test]
    fn payments_end_must_not_be_before_start() {
        assert_eq!(
            check(&[
                ("payments_start_date", "2026-03-01"),
                ("payments_end_date", "2026-03-01"),
            ]),
            Ok(())
        );
        let err = check(&[
            ("payments_start_date", "2026-03-02"),
            ("payments_end_date", "2026-03-01"),
        ])
        .unwrap_err();
        assert_eq!(err.column.as_deref(), Some("payments_end_date"));
        assert!(err.reason.contains("before payments_start_date"), "{err}");
    }

    #[test]
    fn identifiers_with_control_characters_or_a_bom_are_rejected() {
        for column in ["site_order_identifier", "site_customer_identifier"] {
            for (bad, what) in [
                ("A\u{0}1", "NUL"),
                ("\u{feff}A1", "byte-order mark"),
                ("A\r\n1", "line break"),
                ("A\u{7}1", "control character"),
            ] {
                let err = check(&[(column, bad)]).unwrap_err();
                assert_eq!(err.column.as_deref(), Some(column), "{bad:?}");
                assert!(err.reason.contains(what), "{bad:?}: {err}");
            }
            assert_eq!(check(&[(column, "Zoë-1 /#%")]), Ok(()));
        }
    }

    #[test]
    fn wrong_field_count_and_bad_utf8_are_rejected() {
        let header = Header::new(
            BASE.iter().map(|(k, _)| k.to_string()).collect(),
            BASE.iter().map(|(k, _)| params::find(k)).collect(),
            vec![true; BASE.len()],
        );
        let short = Row::new(1, 2, csv::ByteRecord::from(vec!["C1", "10"]));
        let err = check_row(&header, &short, CREATE_REQUIRED).unwrap_err();
        assert_eq!(err.code(), "malformed_row");
        assert!(
            err.reason.contains("2 fields but the header has 5"),
            "{err}"
        );
        let mut fields: Vec<&[u8]> = BASE.iter().map(|(_, v)| v.as_bytes()).collect();
        fields[0] = b"Jos\xe9";
        let latin1 = Row::new(1, 2, csv::ByteRecord::from(fields));
        let err = check_row(&header, &latin1, CREATE_REQUIRED).unwrap_err();
        assert_eq!(err.column.as_deref(), Some("site_customer_identifier"));
        assert!(err.reason.contains("UTF-8"), "{err}");
    }
}
