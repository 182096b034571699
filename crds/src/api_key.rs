//! The API key format both kinds of key share, admin-minted and declared as
//! ApiKey objects: `tg_<prefix>_<secret>`, with 256 random bits in the secret.
//! An admin-minted key is stored only as an HMAC-SHA256 with the tenant's
//! pepper (the gateway holds the pepper); a declared key only as its SHA-256,
//! which the operator computes as it generates the key without ever holding
//! the pepper: against 256 random bits a pepper adds nothing. Pure: the caller
//! brings the random bytes (the gateway for admin-minted keys, the operator for
//! ApiKeys).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of every key.
pub const KEY_PREFIX: &str = "tg_";
/// Random bytes in the display prefix (hex: twice as many characters).
pub const PREFIX_BYTES: usize = 6;
/// Random bytes in the secret part.
pub const SECRET_BYTES: usize = 32;

/// The key made of these random bytes, and its display prefix.
pub fn format_key(prefix: &[u8; PREFIX_BYTES], secret: &[u8; SECRET_BYTES]) -> (String, String) {
    let prefix = hex::encode(prefix);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    (format!("{KEY_PREFIX}{prefix}_{secret}"), prefix)
}

/// The display prefix of a well-formed key (`tg_<12 hex>_<secret>`).
pub fn key_prefix(key: &str) -> Option<&str> {
    let (prefix, secret) = key.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (prefix.len() == PREFIX_BYTES * 2 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(prefix)
}

/// The secret part of a well-formed key (after `tg_<prefix>_`; it may itself hold `_`).
pub fn key_secret(key: &str) -> Option<&str> {
    key_prefix(key)?;
    key.strip_prefix(KEY_PREFIX)?.split_once('_').map(|(_, secret)| secret)
}

/// The pepper's bytes from the `api-key-pepper` file or Secret value: base64 (as the
/// operator writes it), or raw bytes; `None` when fewer than 16.
pub fn pepper_bytes(raw: &[u8]) -> Option<Vec<u8>> {
    let trimmed = raw.trim_ascii();
    let bytes = base64::engine::general_purpose::STANDARD.decode(trimmed).unwrap_or_else(|_| trimmed.to_vec());
    (bytes.len() >= 16).then_some(bytes)
}

/// The stored hash of a key: hex HMAC-SHA256 with the pepper's bytes.
pub fn hash(pepper: &[u8], key: &str) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(pepper) else { return String::new() };
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The stored hash of a key declared as an ApiKey object: hex SHA-256 of the whole key.
pub fn declared_hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The Secret holding the key of the ApiKey `name` generated for `rotation`: the
/// ApiKey's own name until a rotation is asked for, then the name and the first
/// 10 hex digits of the rotation token's SHA-256 (the operator only ever creates
/// Secrets, so each rotation's key gets a Secret of its own).
pub fn secret_name(name: &str, rotation: Option<&str>) -> String {
    use sha2::Digest;
    match rotation.filter(|r| !r.is_empty()) {
        None => name.to_owned(),
        Some(r) => format!("{name}-{}", &hex::encode(Sha256::digest(r.as_bytes()))[..10]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_well_formed_and_hashed_with_the_pepper() {
        let (key, prefix) = format_key(&[0xab; PREFIX_BYTES], &[7; SECRET_BYTES]);
        assert_eq!(prefix, "abababababab");
        assert_eq!(key_prefix(&key), Some("abababababab"));
        assert_eq!(key_prefix("tg_zz_secret"), None);
        assert_eq!(key_secret("tg_abababababab_se_cr_et"), Some("se_cr_et"), "base64url holds underscores");
        assert_eq!(key_secret("tg_zz_secret"), None);
        let pepper = pepper_bytes(b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").expect("pepper");
        assert_eq!(pepper, b"0123456789abcdef0123456789abcdef");
        assert_eq!(pepper_bytes(b"short"), None);
        let h = hash(&pepper, &key);
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash(b"another pepper of enough bytes", &key));
        assert!(!h.contains(&key[3..]));
        let d = declared_hash(&key);
        assert_eq!((d.len(), d == h), (64, false));
        assert_eq!(declared_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn each_rotation_has_a_secret_of_its_own() {
        assert_eq!(secret_name("ci", None), "ci");
        assert_eq!(secret_name("ci", Some("")), "ci", "an empty token is no rotation");
        let (a, b) = (secret_name("ci", Some("2026-12")), secret_name("ci", Some("2027-01")));
        assert!(a.starts_with("ci-") && a.len() == "ci-".len() + 10, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, secret_name("ci", Some("2026-12")), "stable");
    }
}
