//! TLS for every connection (pool, listener, schema work), with rustls.
//!
//! TLS is used when the DSN says `sslmode=require` or a `tls_root_cert` is configured. The server
//! certificate is always verified — against the platform's root certificates plus `tls_root_cert` (a PEM
//! file, for a private CA or a self-signed server). With `sslmode=prefer` (the driver's default) or
//! `disable`, connections are plain: tokio-postgres cannot fall back to plain text after a failed
//! handshake, so "prefer" with verification would break every server with a self-signed certificate.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::settings::CacheSettings;

/// The connector chosen for a DSN.
#[derive(Clone)]
pub(crate) enum Tls {
    /// Plain TCP or Unix socket.
    Off,
    /// rustls with server verification.
    Rustls(MakeRustlsConnect),
}

impl Tls {
    /// Decides on TLS for `config` (forcing `sslmode=require` when a root certificate is configured).
    pub(crate) fn for_config(settings: &CacheSettings, config: &mut tokio_postgres::Config) -> Result<Self> {
        if settings.tls_root_cert.is_some() {
            config.ssl_mode(SslMode::Require);
        }
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Tls::Off);
        }
        Ok(Tls::Rustls(MakeRustlsConnect::new(client_config(settings)?)))
    }
}

fn client_config(settings: &CacheSettings) -> Result<rustls::ClientConfig> {
    let invalid = |reason: String| Error::InvalidSetting { name: "tls_root_cert", reason };
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable platform certificates are skipped: a private CA in tls_root_cert may be all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &settings.tls_root_cert {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("{} is not a PEM certificate file: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(format!("{} holds no certificate", path.display())));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_unless_required() {
        let s = CacheSettings::new("postgresql://u@localhost/db");
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db".parse().unwrap();
        assert!(matches!(Tls::for_config(&s, &mut c), Ok(Tls::Off)));
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db?sslmode=require".parse().unwrap();
        assert!(matches!(Tls::for_config(&s, &mut c), Ok(Tls::Rustls(_))));
    }

    #[test]
    fn missing_root_cert_is_a_typed_error() {
        let s = CacheSettings::new("postgresql://u@localhost/db").tls_root_cert("/nonexistent/ca.pem");
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db".parse().unwrap();
        assert!(matches!(Tls::for_config(&s, &mut c), Err(Error::InvalidSetting { name: "tls_root_cert", .. })));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
    }
}
