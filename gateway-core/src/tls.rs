//! The process-wide rustls crypto provider.
//!
//! Every TLS client of the gateway (reqwest to providers and MCP servers,
//! sqlx to PostgreSQL, the redis crate for `rediss://`) is rustls. rustls
//! picks its crypto provider from its cargo features; when more than one
//! provider is compiled in (say aws-lc-rs for reqwest and jsonwebtoken, and
//! ring pulled in by some other crate), it cannot pick and panics at the first
//! handshake unless a process default is installed. [`ensure_crypto_provider`]
//! installs aws-lc-rs as that default once; `main` calls it first, and the
//! code that opens PostgreSQL and Redis connections calls it again (it is
//! idempotent), so a library user cannot forget it either.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Installs aws-lc-rs as the process-wide rustls provider unless one is
/// installed already (by an earlier call or by an embedding program, whose
/// choice is kept), and returns the provider in effect.
pub fn ensure_crypto_provider() -> Arc<CryptoProvider> {
    if let Some(provider) = CryptoProvider::get_default() {
        return provider.clone();
    }
    // Err means another thread installed one between the check and here: theirs is kept.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_provider_is_installed_and_client_configs_build() {
        let provider = ensure_crypto_provider();
        assert!(!provider.cipher_suites.is_empty());
        let installed = CryptoProvider::get_default().expect("a process default provider after ensure_crypto_provider");
        assert!(Arc::ptr_eq(&provider, installed), "the returned provider is the installed one");
        // What sqlx and the redis crate do at their first handshake: this panics when
        // several providers are compiled in and none is the process default.
        let roots = rustls::RootCertStore::empty();
        let _config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        // Idempotent: a second call keeps the same provider.
        assert!(Arc::ptr_eq(&ensure_crypto_provider(), installed));
    }
}
