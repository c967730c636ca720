//! Provider URLs: parsed, http(s) only, https unless this machine.

use super::ConfigError;

/// Parses a provider URL (`what` names it in errors): http(s) only, no
/// user-info, https unless the host is this machine (a loopback IP or
/// `localhost`). The host is taken from the parsed URL, never split out
/// of the text by hand.
pub fn parse_url(what: &'static str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl {
        what,
        url: url.to_string(),
        why: why.to_string(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(&format!(": {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            ": it carries a user name or password (`user@host`); give the host alone",
        ));
    }
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(ConfigError::InsecureUrl {
                    what,
                    url: url.to_string(),
                });
            }
        }
        _ => return Err(bad(": only https (or http to this machine) is allowed")),
    }
    if parsed.host().is_none() {
        return Err(bad(": no host"));
    }
    Ok(parsed)
}

/// The PayNearMe base URL: [`parse_url`], then without a trailing
/// `/json-api` (how PayNearMe's sample clients write their host; the client
/// adds it), with a note when one was taken off.
pub fn base_url(url: &str) -> Result<String, ConfigError> {
    let parsed = parse_url("base URL", url)?;
    let text = parsed.as_str().trim_end_matches('/');
    match text.strip_suffix("/json-api") {
        Some(base) => {
            tracing::info!(
                "base URL {url} ends in /json-api; using {base} (orderbatch adds /json-api itself)"
            );
            Ok(base.to_string())
        }
        None => Ok(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_required_except_on_loopback() {
        for ok in [
            "https://api.paynearme.com",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://localhost:9/x",
            "http://[::1]:80",
        ] {
            assert!(parse_url("base URL", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.paynearme.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            "ftp://x",
        ] {
            assert!(parse_url("base URL", bad).is_err(), "{bad}");
        }
    }
}
