//! Secrets: read from an environment variable or a private file, never
//! from a flag or the config file.

use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::sources::env;
use super::ConfigError;

#[derive(Debug, Clone)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// Reads the secret from a file that only its owner (and its group) can
/// read, following symbolic links (Kubernetes mounts a secret as
/// `key -> ..data/key`, `..data -> ..2024_..`: the mode checked is the
/// file's). Group read is accepted: Kubernetes gives a 0400 secret file
/// group read for the pod's `fsGroup` (0440), on a volume only that pod
/// mounts; systemd's credentials are 0400 of the service's user. Any
/// permission for others, and group write or execute, are refused. The mode
/// is read from the opened file, so what is checked is what is read.
pub fn read_secret_file(path: &Path) -> Result<SecretString, ConfigError> {
    let fail = |e: std::io::Error| ConfigError::SecretFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(fail)?.permissions().mode() & 0o777;
        if mode & 0o037 != 0 {
            return Err(ConfigError::SecretFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(fail)?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// A secret from the environment variable or file `source` names;
/// `setting` is the config key that names an environment variable.
pub(super) fn read_secret(
    source: &SecretSource,
    setting: &'static str,
) -> Result<SecretString, ConfigError> {
    match source {
        SecretSource::Env(name) => {
            env(name)
                .map(SecretString::from)
                .ok_or_else(|| ConfigError::SecretEnvUnset {
                    name: name.clone(),
                    setting,
                })
        }
        SecretSource::File(path) => read_secret_file(path),
    }
}

/// `NAME`, else the file `NAME_FILE` names ([`read_secret_file`]); `None`
/// when neither is set. For the secrets of `serve` and the sandbox.
pub fn env_secret(name: &str) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = env(name) {
        return Ok(Some(SecretString::from(value)));
    }
    match env(&format!("{name}_FILE")) {
        Some(path) => read_secret_file(Path::new(&path)).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
