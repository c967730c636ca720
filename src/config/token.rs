//! `get_smart_token` options: flags of `run` and `refresh`, and the
//! `[token]` table of the config file.
// Doc comments here are `--help` text, shown as written (`<db>`, bare URLs).
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

/// Options sent with every `get_smart_token` call (also the `[token]`
/// table of the config file).
#[derive(Debug, clap::Args, Default, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenOptions {
    /// Payment flows to offer, comma separated (debit, credit, ach, apple_pay, ...); each sends flow_<name>=true.
    #[arg(long, value_delimiter = ',')]
    pub flow: Vec<String>,
    /// Lifetime of the smart link in seconds.
    #[arg(long)]
    pub link_lifetime_seconds: Option<u64>,
    /// URL shown when payment completes.
    #[arg(long)]
    pub flow_pay_url: Option<String>,
    /// URL shown when the consumer leaves without paying.
    #[arg(long)]
    pub flow_no_pay_url: Option<String>,
    /// URL shown when the flow completes.
    #[arg(long)]
    pub flow_return_url: Option<String>,
    /// URL shown for an expired smart link.
    #[arg(long)]
    pub flow_expired_url: Option<String>,
    /// URL shown when the flow fails.
    #[arg(long)]
    pub flow_error_url: Option<String>,
    /// Ask for a shortened order tracking URL (true or false).
    #[arg(long)]
    pub short_order_url: Option<bool>,
    /// Hide saved payment methods (true or false).
    #[arg(long)]
    pub flow_hide_saved_payment_methods: Option<bool>,
}

impl TokenOptions {
    /// These options, each unset one taken from `file`.
    pub fn over(self, file: TokenOptions) -> TokenOptions {
        TokenOptions {
            flow: if self.flow.is_empty() {
                file.flow
            } else {
                self.flow
            },
            link_lifetime_seconds: self.link_lifetime_seconds.or(file.link_lifetime_seconds),
            flow_pay_url: self.flow_pay_url.or(file.flow_pay_url),
            flow_no_pay_url: self.flow_no_pay_url.or(file.flow_no_pay_url),
            flow_return_url: self.flow_return_url.or(file.flow_return_url),
            flow_expired_url: self.flow_expired_url.or(file.flow_expired_url),
            flow_error_url: self.flow_error_url.or(file.flow_error_url),
            short_order_url: self.short_order_url.or(file.short_order_url),
            flow_hide_saved_payment_methods: self
                .flow_hide_saved_payment_methods
                .or(file.flow_hide_saved_payment_methods),
        }
    }

    /// The parameters to send, or an error naming an unknown flow.
    pub fn params(&self) -> Result<Vec<(String, String)>, String> {
        use crate::provider::paynearme::params::FLOWS;
        let mut params = Vec::new();
        for flow in &self.flow {
            let flow = flow.trim();
            if !FLOWS.contains(&flow) {
                let near = FLOWS
                    .iter()
                    .map(|f| (strsim::levenshtein(flow, f), *f))
                    .min()
                    .filter(|(d, _)| *d <= 3)
                    .map(|(_, f)| format!("; did you mean `{f}`?"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown flow `{flow}`{near} (known: {})",
                    FLOWS.join(", ")
                ));
            }
            params.push((format!("flow_{flow}"), "true".to_string()));
        }
        let texts = [
            (
                "link_lifetime_seconds",
                self.link_lifetime_seconds.map(|s| s.to_string()),
            ),
            ("flow_pay_url", self.flow_pay_url.clone()),
            ("flow_no_pay_url", self.flow_no_pay_url.clone()),
            ("flow_return_url", self.flow_return_url.clone()),
            ("flow_expired_url", self.flow_expired_url.clone()),
            ("flow_error_url", self.flow_error_url.clone()),
            (
                "short_order_url",
                self.short_order_url.map(|b| b.to_string()),
            ),
            (
                "flow_hide_saved_payment_methods",
                self.flow_hide_saved_payment_methods.map(|b| b.to_string()),
            ),
        ];
        params.extend(
            texts
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?))),
        );
        Ok(params)
    }
}
