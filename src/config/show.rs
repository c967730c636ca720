//! `orderbatch config show`.

use super::{AuthMethod, SecretSource, Settings, Source, Sourced};

impl Settings {
    /// `orderbatch config show`: every setting and where it came from; the
    /// secret only by where it is read from.
    pub fn render(&self) -> String {
        fn line(out: &mut String, key: &str, value: Option<(String, &Source)>) {
            match value {
                Some((v, source)) => out.push_str(&format!("{key:<32} = {v:<44} # {source}\n")),
                None => out.push_str(&format!("{key:<32}   (not set)\n")),
            }
        }
        fn text(s: &Option<Sourced<String>>) -> Option<(String, &Source)> {
            s.as_ref().map(|s| (s.value.clone(), &s.source))
        }
        let mut out = String::new();
        line(&mut out, "base_url", text(&self.base_url));
        line(&mut out, "site_identifier", text(&self.site_identifier));
        let method = self.auth_method();
        let how = match &self.auth {
            Some(explicit) => explicit.source.to_string(),
            None if method == AuthMethod::Oauth => "a client id is configured".to_string(),
            None => "no client id is configured".to_string(),
        };
        out.push_str(&format!(
            "{:<32} = {:<44} # {how}\n",
            "auth",
            method.to_string()
        ));
        fn secret(s: &Option<Sourced<SecretSource>>) -> Option<(String, &Source)> {
            s.as_ref()
                .map(|s| (format!("[redacted], read from {}", s.value), &s.source))
        }
        match method {
            AuthMethod::Hmac => {
                line(&mut out, "api_key_id", text(&self.api_key_id));
                line(&mut out, "secret", secret(&self.secret));
            }
            AuthMethod::Oauth => {
                line(&mut out, "client_id", text(&self.client_id));
                line(&mut out, "client_secret", secret(&self.client_secret));
                line(&mut out, "token_url", text(&self.token_url));
                line(&mut out, "scope", text(&self.scope));
                line(
                    &mut out,
                    "token_client_auth",
                    Some((
                        self.token_client_auth.value.to_string(),
                        &self.token_client_auth.source,
                    )),
                );
            }
        }
        let rate = self
            .rate
            .value
            .map_or("unlimited".to_string(), |r| r.to_string());
        line(&mut out, "rate", Some((rate, &self.rate.source)));
        line(
            &mut out,
            "concurrency",
            Some((self.concurrency.value.to_string(), &self.concurrency.source)),
        );
        line(
            &mut out,
            "timeout",
            Some((self.timeout.value.to_string(), &self.timeout.source)),
        );
        match self.token.params() {
            Ok(params) => {
                for (k, v) in params {
                    out.push_str(&format!("{:<32} = {v}\n", format!("token.{k}")));
                }
            }
            Err(e) => out.push_str(&format!("token options: {e}\n")),
        }
        line(
            &mut out,
            "commerce_engine.base_url",
            text(&self.ce.base_url),
        );
        line(
            &mut out,
            "commerce_engine.store_id",
            text(&self.ce.store_id),
        );
        line(
            &mut out,
            "commerce_engine.api_key",
            self.ce
                .api_key
                .as_ref()
                .map(|s| (format!("[redacted], read from {}", s.value), &s.source)),
        );
        out
    }
}
