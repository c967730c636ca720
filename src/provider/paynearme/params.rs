//! The one table of every PayNearMe parameter the tool knows (and the few
//! Commerce Engine retry-payment columns, flagged `ep::CE_RETRY`).
//!
//! A name that turns out to be wrong is corrected here, in one line. Each entry
//! says which endpoints take it, how its value is checked, whether it is
//! customer PII (never stored, redacted in rejects), and whether the name is
//! confirmed by PayNearMe's docs or our best reading of them.

/// Endpoints as bit flags, so one parameter can belong to several.
pub mod ep {
    pub const CREATE: u8 = 1;
    pub const CHANGE: u8 = 2;
    pub const TOKEN: u8 = 4;
    pub const REFRESH: u8 = 8;
    pub const FIND: u8 = 16;
    /// Commerce Engine retry-payment input.
    pub const CE_RETRY: u8 = 32;
    /// Per-row `get_smart_token` columns of `run` and `refresh` files.
    pub const TOKEN_ROW: u8 = 64;
}

/// How a value is checked before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Any non-empty text.
    Text,
    /// An identifier: text without control characters (NUL, line breaks,
    /// tabs) or byte-order marks, which a provider would store as they are.
    Identifier,
    /// Non-negative decimal, at most two decimals.
    Amount,
    /// Exactly `USD`.
    Currency,
    /// Exactly `true` or `false`.
    Bool,
    /// `exact`, `up-to` or `any`.
    OrderType,
    /// A positive whole number.
    PositiveInt,
    /// A non-negative whole number.
    Count,
    /// `YYYY-MM-DD HH:MM:SS TZ`, TZ in ET/CT/MT/PT.
    DateTimeTz,
    /// `MM/DD/YYYY`.
    UsDate,
    /// `YYYY-MM-DD`.
    IsoDate,
    /// One of a fixed list.
    OneOf(&'static [&'static str]),
    /// Two-letter state abbreviation.
    State,
    /// Four-digit year of birth.
    Year,
    /// Plausible e-mail address.
    Email,
    /// Plausible phone number.
    Phone,
}

/// One known parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub endpoints: u8,
    pub rule: Rule,
    pub pii: bool,
    pub confirmed: bool,
}

const FREQUENCIES: &[&str] = &[
    "weekly",
    "biweekly",
    "monthly",
    "twice_monthly",
    "end_of_month",
];
const REMINDER_STATUS: &[&str] = &["active", "user_suspended"];
const AUTOPAY_STATUS: &[&str] = &[
    "active",
    "user_suspended",
    "pending",
    "disabled",
    "complete",
];

const fn p(name: &'static str, endpoints: u8, rule: Rule, pii: bool, confirmed: bool) -> Param {
    Param {
        name,
        endpoints,
        rule,
        pii,
        confirmed,
    }
}

use ep::*;
use Rule::*;

const ORDER: u8 = CREATE | CHANGE;
const LOOKUP: u8 = CHANGE | TOKEN | REFRESH | FIND;

/// Every parameter the tool knows. Transport parameters (`site_identifier`,
/// `timestamp`, `version`, `api_key_id`, `signature`) are not listed: the
/// client adds them to every request.
pub const PARAMS: &[Param] = &[
    p("order_amount", ORDER, Amount, false, true),
    p("order_currency", ORDER, Currency, false, true),
    p(
        "site_customer_identifier",
        CREATE | LOOKUP,
        Identifier,
        false,
        true,
    ),
    p("order_type", ORDER, OrderType, false, true),
    p("order_is_standing", ORDER, Bool, false, true),
    p("return_minimal_info", CREATE, Bool, false, true),
    p("minimum_payment_amount", ORDER, Amount, false, true),
    p("minimum_payment_currency", ORDER, Currency, false, false),
    p("order_duration", ORDER, PositiveInt, false, false),
    p("order_expiration_date", ORDER, DateTimeTz, false, false),
    p("return_html_slip", CREATE, Bool, false, true),
    p("return_pdf_slip", CREATE, Bool, false, true),
    p("payments_start_date", CREATE, IsoDate, false, false),
    p("payments_end_date", CREATE, IsoDate, false, false),
    p("payments_limit", CREATE, Count, false, false),
    p("max_ppas", CREATE, Count, false, false),
    p(
        "sort_payments",
        CREATE,
        OneOf(&["asc", "desc"]),
        false,
        false,
    ),
    p("last_pmt_only", CREATE, Bool, false, true),
    p("return_no_pmts", CREATE, Bool, false, true),
    p("settlement_bank_nickname", CREATE, Text, false, false),
    p(
        "site_creator_identifier",
        CREATE | FIND,
        Identifier,
        false,
        true,
    ),
    p(
        "site_order_identifier",
        CREATE | LOOKUP,
        Identifier,
        false,
        true,
    ),
    p("pnm_order_identifier", LOOKUP, Identifier, false, true),
    p("pnm_customer_identifier", LOOKUP, Identifier, false, true),
    p("site_order_annotation", ORDER | FIND, Text, false, true),
    p("site_order_description", ORDER, Text, false, true),
    p("site_customer_phone", ORDER | FIND, Phone, true, true),
    p("site_customer_email", ORDER | FIND, Email, true, true),
    p("site_customer_name", ORDER, Text, true, true),
    p("site_customer_year_of_birth", ORDER, Year, true, false),
    p(
        "site_customer_language",
        ORDER,
        OneOf(&["en", "sp"]),
        false,
        false,
    ),
    p("site_customer_first_name", ORDER, Text, true, true),
    p("site_customer_last_name", ORDER, Text, true, true),
    p("site_customer_street", ORDER, Text, true, false),
    p("site_customer_city", ORDER, Text, true, false),
    p("site_customer_state", ORDER, State, true, false),
    p("site_customer_postal_code", ORDER, Text, true, true),
    p("site_customer_sms_opt_in", ORDER, Bool, false, false),
    p("reminder_order_amount", ORDER, Amount, false, false),
    p("reminder_balance", ORDER, Amount, false, false),
    p(
        "reminder_status",
        ORDER,
        OneOf(REMINDER_STATUS),
        false,
        false,
    ),
    p(
        "reminder_frequency",
        ORDER,
        OneOf(FREQUENCIES),
        false,
        false,
    ),
    p("reminder_start_date", ORDER, UsDate, false, false),
    p("reminder_end_date", ORDER, UsDate, false, false),
    p("auto_pay_amount", ORDER, Amount, false, true),
    p("auto_pay_currency", ORDER, Currency, false, false),
    p(
        "auto_pay_payment_method_identifier",
        ORDER,
        Text,
        false,
        false,
    ),
    p(
        "auto_pay_status",
        ORDER,
        OneOf(AUTOPAY_STATUS),
        false,
        false,
    ),
    p(
        "auto_pay_frequency",
        ORDER,
        OneOf(FREQUENCIES),
        false,
        false,
    ),
    p("auto_pay_start_date", ORDER, UsDate, false, true),
    p("auto_pay_end_date", ORDER, UsDate, false, false),
    p("pricing_schedule", ORDER, Text, false, false),
    p(
        "settlement_bank_account_identifier",
        ORDER,
        Text,
        false,
        false,
    ),
    p("accepted_payment_types", ORDER, Text, false, false),
    p("order_is_suspended", CHANGE, Bool, false, false),
    p("order_suspension_reason", CHANGE, Text, false, false),
    p("payment_amount", TOKEN | TOKEN_ROW, Amount, false, true),
    p("payment_field_fixed", TOKEN | TOKEN_ROW, Bool, false, true),
    p("flow_trustly", TOKEN | TOKEN_ROW, Bool, false, true),
    p(
        "ext_customer_enrollment_date",
        TOKEN | TOKEN_ROW,
        Text,
        false,
        true,
    ),
    p(
        "ext_customer_date_of_birth_pii",
        TOKEN | TOKEN_ROW,
        Text,
        true,
        true,
    ),
    p(
        "ext_customer_tax_id_pii",
        TOKEN | TOKEN_ROW,
        Text,
        true,
        true,
    ),
    p(
        "flow_bank_oauth_redirect_url",
        TOKEN | TOKEN_ROW,
        Text,
        false,
        true,
    ),
    // Commerce Engine retry-payment rows (not PayNearMe parameters).
    p("order_number", ep::CE_RETRY, Text, false, true),
    p("payment_provider_slug", ep::CE_RETRY, Text, false, true),
    p("integration_type", ep::CE_RETRY, Text, false, true),
    p("return_url", ep::CE_RETRY, Text, false, true),
    p("action", ep::CE_RETRY, Text, false, true),
    p("gateway_reference_id", ep::CE_RETRY, Text, false, true),
    p("force", REFRESH, Bool, false, true),
    p("limit", REFRESH, PositiveInt, false, true),
    p("offset", REFRESH, Count, false, true),
];

/// The `create_order` parameters that must be present and non-empty.
pub const CREATE_REQUIRED: &[&str] = &[
    "order_amount",
    "order_currency",
    "site_customer_identifier",
    "order_type",
    "order_is_standing",
];

/// Payment flows of `get_smart_token`: each name is sent as `flow_<name>=true`.
pub const FLOWS: &[&str] = &[
    "debit",
    "credit",
    "ach",
    "retailer",
    "apple_pay",
    "google_pay",
    "paypal",
    "venmo",
    "pin4",
    "push_debit",
    "push_ach",
    "cash_app",
    "push_paypal",
    "secure_all",
    "edit_schedule",
    "tokenize",
    "trustly",
    "show_all_ppas",
];

/// Looks a parameter up by name.
pub fn find(name: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.name == name)
}

/// The known parameter name closest to `name`, if one is close enough to be a
/// likely typo.
pub fn suggest(name: &str, endpoint: u8) -> Option<&'static str> {
    PARAMS
        .iter()
        .filter(|p| p.endpoints & endpoint != 0)
        .map(|p| (strsim::levenshtein(name, p.name), p.name))
        .filter(|(d, _)| *d <= 3.max(name.len() / 4))
        .min()
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PARAMS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn required_create_params_are_known_create_params() {
        for name in CREATE_REQUIRED {
            let param = find(name).expect(name);
            assert!(param.endpoints & ep::CREATE != 0, "{name}");
        }
    }

    #[test]
    fn suggests_the_closest_name_for_a_typo() {
        assert_eq!(
            suggest("site_custmer_email", ep::CREATE),
            Some("site_customer_email")
        );
        assert_eq!(suggest("zzzzzz", ep::CREATE), None);
    }
}
