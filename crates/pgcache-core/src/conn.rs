//! Connections: the driver configuration, TLS, the pools, one-shot connections for schema work, and the
//! one helper that bounds every statement on the client side.
//!
//! TLS is used when the DSN says `sslmode=require` or a `tls_root_cert` is configured. The server
//! certificate is then always verified, against the platform's root certificates plus `tls_root_cert` (a
//! PEM file, for a private CA or a self-signed server). Otherwise connections are plain (`sslmode=prefer`,
//! the driver's default, is read as plain: tokio-postgres cannot fall back to plain text after a failed
//! handshake, so "prefer" with verification would break every server with a self-signed certificate).
//! Every connection goes through the same rustls connector type; a plain one simply never starts TLS.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::stream::{BoxStream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::settings::{parse_dsn, CacheSettings};

/// Client-side slack on top of `statement_timeout` (which the server enforces) before a statement is
/// given up, for when the server cannot enforce it (frozen, partitioned).
const STATEMENT_SLACK: Duration = Duration::from_millis(500);

/// Runs `op` within `after`; an overrun is [`Error::Timeout`] naming `what`. Every statement this crate
/// sends goes through here (directly or through [`Conn::bounded`]).
pub(crate) async fn bounded<T>(after: Duration, what: &'static str, op: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(after, op).await.map_err(|_| Error::Timeout { what, after })?
}

/// The client-side bound of one statement: `statement_timeout` plus a little slack.
pub(crate) fn statement_bound(settings: &CacheSettings) -> Duration {
    settings.statement_timeout.saturating_add(STATEMENT_SLACK)
}

/// A driver config for `dsn` (`name` is the setting it came from) with this library's session settings.
pub(crate) fn pg_config(settings: &CacheSettings, name: &'static str, dsn: &str) -> Result<tokio_postgres::Config> {
    let mut config = parse_dsn(name, dsn)?;
    let mut options = config.get_options().unwrap_or_default().to_owned();
    options.push_str(&format!(" -c statement_timeout={}", settings.statement_timeout.as_millis()));
    // This library's statements log their own invalidations (none with disable_notify): the table's
    // triggers, which log for every other writer, skip its sessions (`sql/notify_function.sql`).
    // And every UPDATE it sends takes the row's new version itself, so the version trigger skips it too.
    options.push_str(" -c pgcache.skip_notify=on -c pgcache.library=on");
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name(&settings.application_name);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(settings.pool_timeout);
    }
    // Notice a dead peer within seconds, not the kernel's two hours.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(10));
    Ok(config)
}

/// The connector for `config`: verified TLS when required (forcing `sslmode=require` when a root
/// certificate is configured), else plain (`sslmode=disable`).
pub(crate) fn tls(settings: &CacheSettings, config: &mut tokio_postgres::Config) -> Result<MakeRustlsConnect> {
    if settings.tls_root_cert.is_some() {
        config.ssl_mode(SslMode::Require);
    }
    let roots = if config.get_ssl_mode() == SslMode::Require {
        trusted_roots(settings)?
    } else {
        config.ssl_mode(SslMode::Disable);
        rustls::RootCertStore::empty()
    };
    let invalid = |reason: String| Error::InvalidSetting { name: "tls_root_cert", reason };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(client))
}

fn trusted_roots(settings: &CacheSettings) -> Result<rustls::RootCertStore> {
    let invalid = |reason: String| Error::InvalidSetting { name: "tls_root_cert", reason };
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable platform certificates are skipped: a private CA in tls_root_cert may be all that is needed.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
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
    Ok(roots)
}

/// The messages of a connection opened with [`open`]: notifications, notices, and its end.
pub(crate) type Messages = BoxStream<'static, std::result::Result<AsyncMessage, tokio_postgres::Error>>;

/// Opens one unpooled connection within `pool_timeout` (the driver's connect timeout only bounds the TCP
/// connect: a server that accepts and never answers would otherwise hang the start-up). The caller
/// drives the connection by polling the returned messages.
pub(crate) async fn open(
    settings: &CacheSettings,
    name: &'static str,
    dsn: &str,
) -> Result<(tokio_postgres::Client, Messages)> {
    let mut config = pg_config(settings, name, dsn)?;
    let tls = tls(settings, &mut config)?;
    let connect = async { config.connect(tls).await.map_err(Error::from_pg) };
    let (client, mut connection) = bounded(settings.pool_timeout, "connecting to PostgreSQL", connect).await?;
    let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx)).boxed();
    Ok((client, messages))
}

/// Opens one unpooled connection for schema work (on `listen_dsn` when set: session work needs a direct
/// connection, not one through a transaction pooler); a task drives it (notices are logged at debug
/// level, never printed) until the client is dropped.
pub(crate) async fn open_one_shot(settings: &CacheSettings) -> Result<tokio_postgres::Client> {
    let (name, dsn) = match &settings.listen_dsn {
        Some(direct) => ("listen_dsn", direct.as_str()),
        None => ("dsn", settings.dsn.as_str()),
    };
    let (client, mut messages) = open(settings, name, dsn).await?;
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(target: "pgcache::conn", message = notice.message(), "server notice")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(target: "pgcache::conn", error = %e, "one-shot connection closed");
                    return;
                }
            }
        }
    });
    Ok(client)
}

/// A deadpool pool with every timeout set (deadpool's default is to wait forever).
pub(crate) fn build_pool(settings: &CacheSettings, name: &'static str, dsn: &str, max_size: usize) -> Result<Pool> {
    let mut config = pg_config(settings, name, dsn)?;
    let tls = tls(settings, &mut config)?;
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(settings.pool_timeout))
        .create_timeout(Some(settings.pool_timeout))
        .recycle_timeout(Some(settings.pool_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::InvalidSetting { name: "max_pool_size", reason: e.to_string() })
}

/// The pools of one cache instance.
pub(crate) struct Db {
    pool: Pool,
    /// Connections for advisory locks: `listen_dsn` when set (session locks need a direct connection,
    /// not one through a transaction pooler).
    lock_pool: Pool,
    statement_bound: Duration,
}

impl Db {
    /// Builds the pools (no connection is opened yet).
    pub(crate) fn new(settings: &CacheSettings) -> Result<Self> {
        let pool = build_pool(settings, "dsn", &settings.dsn, settings.max_pool_size)?;
        let lock_pool = match &settings.listen_dsn {
            Some(dsn) => build_pool(settings, "listen_dsn", dsn, settings.max_pool_size.clamp(1, 8))?,
            None => pool.clone(),
        };
        Ok(Self { pool, lock_pool, statement_bound: statement_bound(settings) })
    }

    /// A pooled connection.
    pub(crate) async fn conn(&self) -> Result<Conn> {
        let object = self.pool.get().await.map_err(Error::from_pool)?;
        Ok(Conn::new(object, self.statement_bound))
    }

    /// A pooled connection if one is free right now, without queueing behind other callers
    /// ([`Error::is_pool_busy`] otherwise).
    pub(crate) async fn conn_if_free(&self) -> Result<Conn> {
        let mut timeouts = self.pool.timeouts();
        timeouts.wait = Some(Duration::ZERO);
        let object = self.pool.timeout_get(&timeouts).await.map_err(Error::from_pool)?;
        Ok(Conn::new(object, self.statement_bound))
    }

    /// A pooled connection for advisory locks.
    pub(crate) async fn lock_conn(&self) -> Result<Conn> {
        let object = self.lock_pool.get().await.map_err(Error::from_pool)?;
        Ok(Conn::new(object, self.statement_bound))
    }

    /// Opens `n` connections now (and returns them to the pool).
    pub(crate) async fn warm(&self, n: usize) -> Result<()> {
        let mut warm = Vec::with_capacity(n);
        for _ in 0..n {
            warm.push(self.conn().await?);
        }
        Ok(())
    }

    pub(crate) fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    pub(crate) fn close(&self) {
        self.pool.close();
        self.lock_pool.close();
    }
}

/// A pooled connection whose statements are bounded. One whose statement overran is closed when it is
/// dropped, never pooled again: a frozen or partitioned server must not hand a wedged connection to the
/// next caller.
pub(crate) struct Conn {
    object: Option<Object>,
    bound: Duration,
    overran: AtomicBool,
}

impl Conn {
    pub(crate) fn new(object: Object, bound: Duration) -> Self {
        Self { object: Some(object), bound, overran: AtomicBool::new(false) }
    }

    /// The client, for statements (run them through [`bounded`](Self::bounded)). Always there until
    /// [`discard`](Self::discard) consumes the connection.
    pub(crate) fn client(&self) -> Result<&deadpool_postgres::Client> {
        self.object.as_ref().ok_or(Error::Closed)
    }

    /// Runs a statement on this connection within the statement bound.
    pub(crate) async fn bounded<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let result = bounded(self.bound, "database statement", op).await;
        if matches!(result, Err(Error::Timeout { .. })) {
            self.overran.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Closes the connection instead of returning it to the pool (it holds session state, or broke).
    pub(crate) fn discard(mut self) {
        self.overran.store(true, Ordering::SeqCst);
        drop(self.object.take().map(Object::take));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.overran.load(Ordering::SeqCst) {
            // Detached from the pool and dropped: the session ends (and PostgreSQL frees its locks).
            drop(self.object.take().map(Object::take));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_unless_required() {
        let s = CacheSettings::new("postgresql://u@localhost/db");
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db".parse().unwrap();
        assert!(tls(&s, &mut c).is_ok());
        assert_eq!(c.get_ssl_mode(), SslMode::Disable);
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db?sslmode=require".parse().unwrap();
        assert!(tls(&s, &mut c).is_ok());
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn missing_root_cert_is_a_typed_error() {
        let s = CacheSettings::new("postgresql://u@localhost/db").tls_root_cert("/nonexistent/ca.pem");
        let mut c: tokio_postgres::Config = "postgresql://u@localhost/db".parse().unwrap();
        assert!(matches!(tls(&s, &mut c), Err(Error::InvalidSetting { name: "tls_root_cert", .. })));
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
    }

    #[tokio::test]
    async fn bounded_reports_what_timed_out() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        };
        let err = bounded(Duration::from_millis(1), "test statement", slow).await;
        assert!(matches!(err, Err(Error::Timeout { what: "test statement", .. })));
    }
}
