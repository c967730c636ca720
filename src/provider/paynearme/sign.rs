//! PayNearMe request signing: HMAC-SHA256 over the sorted, concatenated
//! `key` + `value` pairs of every parameter sent except `signature`.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The MAC over `params` (which must not contain `signature`).
fn mac(params: &[(&str, &str)], secret: &SecretString) -> Hmac<Sha256> {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    for (key, value) in sorted {
        mac.update(key.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Signs `params` (which must not contain `signature`) with `secret` and
/// returns the lowercase hex signature.
pub fn sign(params: &[(&str, &str)], secret: &SecretString) -> String {
    hex::encode(mac(params, secret).finalize().into_bytes())
}

/// Checks a received signature in constant time.
pub fn verify(params: &[(&str, &str)], secret: &SecretString, signature: &str) -> bool {
    match hex::decode(signature) {
        Ok(given) => mac(params, secret).verify_slice(&given).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PayNearMe's published test vector (API_CONTRACT.md).
    const VECTOR: &[(&str, &str)] = &[
        ("site_identifier", "S2155373459"),
        ("timestamp", "1636142061"),
        ("version", "3.0"),
        ("order_amount", "500"),
        ("order_currency", "USD"),
        ("site_customer_identifier", "11223344"),
        ("order_type", "any"),
        ("order_is_standing", "true"),
    ];
    const SIGNATURE: &str = "65c694f4b632187aa02fc4144cdd374373307f0a200448c9e53f2e47d84b3b82";

    fn secret() -> SecretString {
        SecretString::from("ab7b539ea1317cca67c63c552")
    }

    #[test]
    fn matches_published_vector() {
        assert_eq!(sign(VECTOR, &secret()), SIGNATURE);
    }

    #[test]
    fn order_of_parameters_does_not_matter() {
        let mut reversed = VECTOR.to_vec();
        reversed.reverse();
        assert_eq!(sign(&reversed, &secret()), SIGNATURE);
    }

    #[test]
    fn verify_accepts_the_vector_and_rejects_tampering() {
        assert!(verify(VECTOR, &secret(), SIGNATURE));
        let mut tampered = VECTOR.to_vec();
        tampered[3] = ("order_amount", "501");
        assert!(!verify(&tampered, &secret(), SIGNATURE));
        assert!(!verify(VECTOR, &SecretString::from("other"), SIGNATURE));
        assert!(!verify(VECTOR, &secret(), "not-hex"));
    }
}
