//! Credentials and endpoints from the environment (never from a command-line
//! value, which `ps` would show).

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::provider::paynearme::PnmCredentials;

/// A configuration problem; the message says what to set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set; {1}")]
    Missing(&'static str, &'static str),
    #[error("cannot read the secret file {path}: {detail}")]
    SecretFile { path: PathBuf, detail: String },
    #[error("the secret file {path} can be read by others (mode {mode:o}); run `chmod 600 {path}`", path = path.display())]
    SecretFileOpen { path: PathBuf, mode: u32 },
    #[error("base URL `{0}` is not https; https is required except for a sandbox on this machine (127.0.0.1, ::1 or localhost)")]
    InsecureUrl(String),
    #[error("base URL `{0}` is not a valid http(s) URL")]
    BadUrl(String),
}

/// Reads the secret from a file that only its owner can read.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| ConfigError::SecretFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::SecretFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::SecretFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// Refuses a plain-http base URL unless it points at this machine.
pub fn check_base_url(url: &str) -> Result<(), ConfigError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err(ConfigError::BadUrl(url.to_string()));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(ConfigError::InsecureUrl(url.to_string()))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// PayNearMe credentials: `PNM_SITE_IDENTIFIER`, `PNM_SECRET_KEY` or
/// `PNM_SECRET_KEY_FILE`, optional `PNM_API_KEY_ID`, and the base URL from
/// `--base-url` or `PNM_BASE_URL` (no default: never production by accident).
pub fn pnm_credentials(base_url: Option<String>) -> Result<PnmCredentials, ConfigError> {
    let base_url = base_url.or_else(|| env("PNM_BASE_URL")).ok_or(ConfigError::Missing(
        "PNM_BASE_URL",
        "set it or pass --base-url (e.g. https://api.paynearme-sandbox.com, or the URL `orderbatch sandbox` prints)",
    ))?;
    check_base_url(&base_url)?;
    let site_identifier = env("PNM_SITE_IDENTIFIER").ok_or(ConfigError::Missing(
        "PNM_SITE_IDENTIFIER",
        "set it to your PayNearMe site identifier",
    ))?;
    let secret = match (env("PNM_SECRET_KEY"), env("PNM_SECRET_KEY_FILE")) {
        (Some(secret), _) => SecretString::from(secret),
        (None, Some(file)) => read_secret_file(Path::new(&file))?,
        (None, None) => {
            return Err(ConfigError::Missing(
                "PNM_SECRET_KEY",
                "set it, or PNM_SECRET_KEY_FILE to a file (mode 600) holding the secret",
            ))
        }
    };
    Ok(PnmCredentials {
        base_url,
        site_identifier,
        secret,
        api_key_id: env("PNM_API_KEY_ID"),
    })
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
            assert!(check_base_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.paynearme.com",
            "http://10.0.0.1",
            "http://127.0.0.1.evil.com",
            "ftp://x",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(read_secret_file(&path).unwrap().expose_secret(), "s3cret");
    }
}
