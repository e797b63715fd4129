//! TLS on both sides of the proxy: the listener's certificate, reloaded when its files
//! change, and the upstream client's trust roots.
//!
//! # Serving
//!
//! [`ServerTls::load`] reads `server.tls.cert` (a PEM chain, leaf first) and
//! `server.tls.key` (PKCS#8, PKCS#1 or SEC1 PEM) with `rustls-pki-types`, checks that the key
//! matches the leaf, and builds a rustls [`ServerConfig`] offering ALPN `h2` and `http/1.1`.
//! A bad file at start-up is an error that names the file; the process does not start.
//!
//! The certificate is not baked into the config: a [`ResolvesServerCert`] hands every
//! handshake the current `Arc<CertifiedKey>` from a slot that the reload task swaps. A
//! handshake costs one uncontended read lock and one reference-count increment; connections
//! already established keep the certificate they were handshaken with.
//!
//! # Reloading
//!
//! cert-manager and the kubelet rotate certificates by writing a new directory and swapping a
//! `..data` symlink; other tools rename files into place or rewrite them. Metadata is a weak
//! signal for all of these: the visible path's own mtime does not change when a symlink
//! further up is swapped, two certificates for the same names usually have the same length,
//! and coarse timestamps can hide a rewrite within one tick. So every `reload_interval` the
//! task reads both files through their paths (following every symlink to the current
//! target) and compares a SHA-256 of their contents with the last one seen. Two small files
//! every few seconds cost nothing, and no rotation scheme can slip past a content hash. The
//! reads run on the blocking pool so a slow volume never stalls a runtime thread.
//!
//! A change is acted on once: good files are swapped in and logged at `info` with the leaf's
//! SHA-256 fingerprint (the one `openssl x509 -fingerprint -sha256` prints); bad files
//! (missing, not PEM, a key that does not match) are logged at `error` once and the previous
//! certificate keeps being served until the files change again. A rotation that writes the
//! certificate and the key in two steps may be seen half-way, log one error, and be picked up
//! complete on the next tick. [`ServerTls::reload_stats`] counts both outcomes for metrics.
//!
//! A config reload (SIGHUP, `server.watch_config`) checks the files at once through
//! [`ServerTls::reconfigure`], which may also name new paths and a new `reload_interval`:
//! usable files become the watched ones, unusable ones refuse the reload and change nothing.
//!
//! The leaf's `notAfter` is read from its DER at load and on every reload (a few lines of
//! DER walking, no X.509 library) and exported as
//! `gatehouse_tls_certificate_expiry_timestamp_seconds` once [`ServerTls::export_expiry`]
//! hands the reloader the gauge, so an alert can warn before a rotation that never came.
//!
//! # Upstream
//!
//! [`upstream_connector`] wraps the plain TCP connector so `https://` upstreams work. With
//! `upstream.ca_file` the bundle's certificates are the only roots trusted (like `curl
//! --cacert`): a private upstream is pinned to its private CA rather than to any public one.
//! Without it the Mozilla roots bundled by `webpki-roots` are used, so the behaviour does not
//! depend on the image's CA store.
//!
//! Every config is built with an explicit aws-lc-rs provider rather than the process-wide
//! default, so nothing here depends on, or changes, global state.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Protocols offered by ALPN, most preferred first: HTTP/2 where the client speaks it.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be used.
#[derive(Debug)]
pub enum TlsError {
    /// A file is missing, unreadable, or does not hold what it should.
    File { path: PathBuf, reason: String },
    /// rustls refused to build a config (it does not with the default provider).
    Config(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File { path, reason } => write!(f, "{}: {reason}", path.display()),
            TlsError::Config(e) => write!(f, "cannot build the TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e)
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The one crypto provider linked into the binary.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reload counters, for metrics and for tests that must know a check has happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReloadStats {
    /// New certificates swapped in since start.
    pub reloads: u64,
    /// Changes refused because the new files were unusable.
    pub failures: u64,
}

/// The listener's TLS: an acceptor whose certificate follows the files on disk.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    certs: Arc<ReloadingCert>,
}

impl ServerTls {
    /// Loads the certificate and key and builds the server config. Errors name the file.
    pub fn load(config: &TlsConfig) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let certs = Arc::new(ReloadingCert::load(
            config.cert.clone(),
            config.key.clone(),
            provider.clone(),
        )?);
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        certs.set_interval(config.reload_interval);
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certs,
        })
    }

    /// Applies a reloaded config's `server.tls`: the files are read and checked now, and
    /// only if they are usable do they become the watched files and the served certificate
    /// (connections already open keep theirs). On an error nothing changes: the previous
    /// files stay watched and their certificate served. The new `reload_interval` applies
    /// from the next check. Blocking: reads the files.
    pub fn reconfigure(&self, config: &TlsConfig) -> Result<(), TlsError> {
        self.certs.switch(&config.cert, &config.key)?;
        self.certs.set_interval(config.reload_interval);
        Ok(())
    }

    /// The acceptor for incoming connections; cheap to clone.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Starts the task that checks the files every `reload_interval`. Call once. The task
    /// ends when the last config using these certificates is gone.
    pub fn spawn_reloader(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.certs);
        tokio::spawn(async move {
            loop {
                // The interval is read each round, so a reload that changes it applies from
                // the next check. Sleeping after each check (rather than on a fixed grid)
                // means a check that overran (a slow volume) is not followed by a burst.
                let Some(period) = weak.upgrade().map(|certs| certs.interval()) else {
                    return;
                };
                tokio::time::sleep(period).await;
                let Some(certs) = weak.upgrade() else { return };
                if let Err(e) = tokio::task::spawn_blocking(move || certs.check()).await {
                    tracing::error!(error = %e, "TLS certificate check failed to run");
                }
            }
        })
    }

    /// The served leaf certificate's `notAfter` (Unix seconds), when its DER could be read.
    pub fn certificate_expiry(&self) -> Option<i64> {
        let value = self.certs.not_after.load(Ordering::Relaxed);
        (value != NO_EXPIRY).then_some(value)
    }

    /// Keeps `gauge` at the served certificate's `notAfter`: set now, and again by every
    /// reload. Call once; later calls are ignored.
    pub fn export_expiry(&self, gauge: prometheus::IntGauge) {
        if let Some(expiry) = self.certificate_expiry() {
            gauge.set(expiry);
        }
        let _ = self.certs.expiry_gauge.set(gauge);
    }

    /// How many reloads succeeded and failed so far.
    pub fn reload_stats(&self) -> ReloadStats {
        ReloadStats {
            reloads: self.certs.reloads.load(Ordering::Relaxed),
            failures: self.certs.failures.load(Ordering::Relaxed),
        }
    }
}

/// What the reload task saw on its last look, so each change is acted on and logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Both files were read; the SHA-256 of their contents.
    Files([u8; 32]),
    /// A file could not be read, for this reason.
    Unreadable(String),
}

/// What one check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Unchanged,
    Reloaded,
    Rejected,
}

/// The files the reload task watches, and what it saw in them last.
struct Watched {
    cert_path: PathBuf,
    key_path: PathBuf,
    seen: Seen,
}

/// The certificate resolver: the current certificate in a swappable slot, and the files it
/// came from.
struct ReloadingCert {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Only the reload task and a config reload take this lock.
    watched: Mutex<Watched>,
    /// `server.tls.reload_interval` in milliseconds.
    interval_ms: AtomicU64,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// The current leaf's `notAfter`, or [`NO_EXPIRY`] when its DER could not be read.
    not_after: AtomicI64,
    /// Set once by [`ServerTls::export_expiry`].
    expiry_gauge: OnceLock<prometheus::IntGauge>,
}

/// `not_after` of a leaf whose validity could not be parsed (rustls accepted it anyway).
const NO_EXPIRY: i64 = i64::MIN;

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ReloadingCert")
            .field("cert", &watched.cert_path)
            .field("key", &watched.key_path)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock means a writer panicked, and the only write is one pointer
        // assignment: the slot still holds a whole certificate, so keep serving it.
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl ReloadingCert {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let (cert, key) = read_pair(&cert_path, &key_path)?;
        let certified = certified_key(&cert, &key, &cert_path, &key_path, &provider)?;
        let not_after = leaf_not_after(&certified).unwrap_or(NO_EXPIRY);
        Ok(ReloadingCert {
            not_after: AtomicI64::new(not_after),
            expiry_gauge: OnceLock::new(),
            watched: Mutex::new(Watched {
                seen: Seen::Files(digest(&cert, &key)),
                cert_path,
                key_path,
            }),
            interval_ms: AtomicU64::new(0),
            current: RwLock::new(Arc::new(certified)),
            provider,
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    fn set_interval(&self, interval: Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.interval_ms.store(ms, Ordering::Relaxed);
    }

    /// Reads the files and swaps in a new certificate when their contents changed and are
    /// good. Blocking: runs on the blocking pool.
    fn check(&self) -> Outcome {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert, key) = match read_pair(&watched.cert_path, &watched.key_path) {
            Ok(pair) => pair,
            Err(e) => {
                let now = Seen::Unreadable(e.to_string());
                if watched.seen == now {
                    return Outcome::Unchanged;
                }
                watched.seen = now;
                return self.reject(&e);
            }
        };
        let now = Seen::Files(digest(&cert, &key));
        if watched.seen == now {
            return Outcome::Unchanged;
        }
        watched.seen = now;
        // Parsed from the very bytes that were hashed, so a file replaced between the two
        // steps is seen as another change on the next tick rather than mixed into this one.
        match certified_key(
            &cert,
            &key,
            &watched.cert_path,
            &watched.key_path,
            &self.provider,
        ) {
            Ok(certified) => {
                self.install(certified, &watched.cert_path);
                Outcome::Reloaded
            }
            Err(e) => self.reject(&e),
        }
    }

    /// Checks the files at `cert_path` and `key_path` now and, when they are usable, makes
    /// them the watched files and serves their certificate (if it differs from the one
    /// served). On an error nothing changes and the error is returned, not counted: the
    /// config reload that asked refuses itself and says why.
    fn switch(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let (cert, key) = read_pair(cert_path, key_path)?;
        let certified = certified_key(&cert, &key, cert_path, key_path, &self.provider)?;
        let now = Seen::Files(digest(&cert, &key));
        if watched.seen != now {
            self.install(certified, cert_path);
        }
        *watched = Watched {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            seen: now,
        };
        Ok(())
    }

    /// Serves `certified` from now on, with its expiry in the gauge; counted and logged.
    fn install(&self, certified: CertifiedKey, cert_path: &Path) {
        let fingerprint = leaf_fingerprint(&certified);
        let not_after = leaf_not_after(&certified);
        self.not_after
            .store(not_after.unwrap_or(NO_EXPIRY), Ordering::Relaxed);
        if let (Some(gauge), Some(expiry)) = (self.expiry_gauge.get(), not_after) {
            gauge.set(expiry);
        }
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            cert = %cert_path.display(),
            sha256 = %fingerprint,
            "TLS certificate reloaded"
        );
    }

    fn reject(&self, e: &TlsError) -> Outcome {
        self.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            error = %e,
            "TLS certificate files changed but cannot be used; still serving the previous certificate"
        );
        Outcome::Rejected
    }
}

/// Reads both files whole, following symlinks to their current targets.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| file_error(path, e.to_string()));
    Ok((read(cert_path)?, read(key_path)?))
}

/// SHA-256 over both files; the length prefix keeps (cert, key) pairs from colliding by
/// moving bytes from one file to the other.
fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_le_bytes());
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}

/// Parses a PEM chain and key and checks that they belong together.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(cert_path, "contains no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        file_error(
            key_path,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => file_error(
            key_path,
            format!("does not match the certificate in {}", cert_path.display()),
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            file_error(cert_path, format!("unusable certificate: {e}"))
        }
        other => file_error(key_path, format!("unusable private key: {other}")),
    })
}

/// The leaf certificate's SHA-256 fingerprint in hex, as operators compare it.
fn leaf_fingerprint(certified: &CertifiedKey) -> String {
    let Some(leaf) = certified.cert.first() else {
        return String::new();
    };
    let mut hex = String::with_capacity(64);
    for byte in Sha256::digest(leaf.as_ref()) {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The leaf certificate's `notAfter` in Unix seconds.
fn leaf_not_after(certified: &CertifiedKey) -> Option<i64> {
    certified
        .cert
        .first()
        .and_then(|leaf| not_after(leaf.as_ref()))
}

/// `notAfter` of a DER X.509 certificate (RFC 5280 §4.1): `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity
/// SEQUENCE { notBefore, notAfter }, … } … }`. `None` for anything it cannot follow.
fn not_after(der: &[u8]) -> Option<i64> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != 0x30 {
        return None;
    }
    // The optional explicit [0] version.
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    let (tag, validity, _) = der_element(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    match tag {
        // UTCTime YYMMDDHHMMSSZ: years 50–99 are 19xx (RFC 5280 §4.1.2.5.1).
        0x17 if time.len() == 13 => {
            let yy: i64 = time.get(0..2)?.parse().ok()?;
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            der_time(year, time.get(2..)?)
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ.
        0x18 if time.len() == 15 => der_time(time.get(0..4)?.parse().ok()?, time.get(4..)?),
        _ => None,
    }
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `MMDDHHMMSSZ` of `year` as Unix seconds (proleptic Gregorian, UTC).
fn der_time(year: i64, rest: &str) -> Option<i64> {
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let field = |i: usize| rest.get(i..i + 2).and_then(|v| v.parse::<i64>().ok());
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// The upstream connector: plain TCP for `http://`, rustls for `https://` (HTTP/1.1 only,
/// as the upstream pool speaks). `ca_file` replaces the public roots with its certificates.
pub fn upstream_connector(
    mut http: HttpConnector,
    ca_file: Option<&Path>,
) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    // The TCP connector refuses https:// URIs unless told that a TLS layer sits above it.
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => builder.with_tls_config(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
        ),
        None => builder.with_provider_and_webpki_roots(provider())?,
    };
    Ok(builder.https_or_http().enable_http1().wrap_connector(http))
}

/// Every certificate in a PEM bundle, as trust anchors. Anything unusable in the bundle is
/// an error rather than skipped: a silently dropped root shows up much later as an outage.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| file_error(path, e.to_string()))?;
    for (i, cert) in certs.enumerate() {
        let cert = cert.map_err(|e| file_error(path, format!("not a PEM bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("certificate #{}: {e}", i + 1)))?;
    }
    if roots.is_empty() {
        return Err(file_error(path, "contains no PEM certificate"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A certificate for `localhost` and its key, as PEM.
    struct Pair {
        cert: String,
        key: String,
        der: Vec<u8>,
    }

    fn pair() -> Pair {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn ca_pem() -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes `contents` to `name`, or removes it for `None`.
        fn put(&self, name: &str, contents: Option<&str>) {
            match contents {
                Some(text) => std::fs::write(self.path(name), text).unwrap(),
                None => {
                    let _ = std::fs::remove_file(self.path(name));
                }
            }
        }

        fn config(&self) -> TlsConfig {
            TlsConfig {
                cert: self.path("tls.crt"),
                key: self.path("tls.key"),
                reload_interval: Duration::from_secs(10),
            }
        }
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        tls.certs.current.read().unwrap().cert[0].to_vec()
    }

    /// Loads `cert`/`key` (`None` = missing file) and expects success or an error containing
    /// `expect` that names `blamed`.
    fn check(cert: Option<&str>, key: Option<&str>, expect: Result<(), (&str, &str)>) {
        let files = Files::new();
        files.put("tls.crt", cert);
        files.put("tls.key", key);
        match (ServerTls::load(&files.config()), expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err((blamed, fragment))) => {
                let text = e.to_string();
                assert!(
                    text.contains(blamed) && text.contains(fragment),
                    "expected {fragment:?} about {blamed}, got {text:?}"
                );
            }
            (Ok(_), Err(expected)) => panic!("loaded, expected error {expected:?}"),
            (Err(e), Ok(())) => panic!("expected success, got {e}"),
        }
    }

    #[test]
    fn startup_accepts_good_files_and_names_the_bad_one() {
        let good = pair();
        let other = pair();
        let chain = format!("{}{}", good.cert, ca_pem());
        let key_then_cert = format!("{}{}", good.key, good.cert);
        let garbage_pem = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        let not_a_cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        check(Some(&good.cert), Some(&good.key), Ok(()));
        // A chain with an intermediate, and a key file that also holds the certificate.
        check(Some(&chain), Some(&key_then_cert), Ok(()));
        check(None, Some(&good.key), Err(("tls.crt", "No such file")));
        check(Some(&good.cert), None, Err(("tls.key", "No such file")));
        check(Some("hello"), Some(&good.key), Err(("tls.crt", "no PEM")));
        check(Some(&good.key), Some(&good.key), Err(("tls.crt", "no PEM")));
        check(
            Some(garbage_pem),
            Some(&good.key),
            Err(("tls.crt", "not a PEM")),
        );
        check(
            Some(not_a_cert),
            Some(&good.key),
            Err(("tls.crt", "unusable certificate")),
        );
        check(
            Some(&good.cert),
            Some("hello"),
            Err(("tls.key", "private key")),
        );
        check(
            Some(&good.cert),
            Some(&good.cert),
            Err(("tls.key", "private key")),
        );
        check(
            Some(&good.cert),
            Some(&other.key),
            Err(("tls.key", "does not match")),
        );
    }

    #[test]
    fn alpn_offers_h2_then_http1() {
        let files = Files::new();
        let good = pair();
        files.put("tls.crt", Some(&good.cert));
        files.put("tls.key", Some(&good.key));
        let tls = ServerTls::load(&files.config()).unwrap();
        assert_eq!(
            tls.acceptor().config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(served(&tls), good.der);
    }

    /// One step of a rotation: the files as written, what the check does, which certificate
    /// is served afterwards (an index into the generated pairs) and the counters.
    struct Step {
        cert: Option<usize>,
        key: Option<usize>,
        garbage_cert: bool,
        outcome: Outcome,
        served: usize,
        stats: (u64, u64),
    }

    /// A pair whose leaf expires at the start of `(year, month, day)` UTC.
    fn pair_expiring(year: i32, month: u8, day: u8) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        // UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
        assert_eq!(
            not_after(&pair_expiring(2031, 5, 17).der),
            Some(1_936_742_400)
        );
        assert_eq!(
            not_after(&pair_expiring(2061, 2, 28).der),
            Some(2_876_774_400)
        );
        assert_eq!(not_after(b"not der"), None);
        assert_eq!(not_after(&[]), None);
        let der = pair_expiring(2031, 5, 17).der;
        for cut in [1, 5, 40, der.len() / 2] {
            assert_eq!(not_after(&der[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(der_time(1999, "1231235959Z"), Some(946_684_799));
        assert_eq!(der_time(2024, "1332000000Z"), None);
    }

    #[test]
    fn the_expiry_gauge_follows_load_and_reload() {
        let (old, new) = (pair_expiring(2031, 5, 17), pair_expiring(2061, 2, 28));
        let files = Files::new();
        files.put("tls.crt", Some(&old.cert));
        files.put("tls.key", Some(&old.key));
        let tls = ServerTls::load(&files.config()).unwrap();
        assert_eq!(tls.certificate_expiry(), Some(1_936_742_400));
        let gauge = prometheus::IntGauge::new("expiry", "test").unwrap();
        tls.export_expiry(gauge.clone());
        assert_eq!(gauge.get(), 1_936_742_400, "set at load");
        files.put("tls.crt", Some(&new.cert));
        files.put("tls.key", Some(&new.key));
        assert_eq!(tls.certs.check(), Outcome::Reloaded);
        assert_eq!(gauge.get(), 2_876_774_400, "set on reload");
        // A refused change keeps the served certificate and its expiry.
        files.put("tls.crt", Some("garbage"));
        assert_eq!(tls.certs.check(), Outcome::Rejected);
        assert_eq!(gauge.get(), 2_876_774_400);
        assert_eq!(tls.certificate_expiry(), Some(2_876_774_400));
    }

    #[test]
    fn reload_follows_good_changes_and_keeps_the_old_certificate_on_bad_ones() {
        let pairs = [pair(), pair(), pair()];
        let files = Files::new();
        files.put("tls.crt", Some(&pairs[0].cert));
        files.put("tls.key", Some(&pairs[0].key));
        let tls = ServerTls::load(&files.config()).unwrap();
        let step = |cert, key, garbage_cert, outcome, served, stats| Step {
            cert,
            key,
            garbage_cert,
            outcome,
            served,
            stats,
        };
        let steps = [
            // Nothing changed.
            step(Some(0), Some(0), false, Outcome::Unchanged, 0, (0, 0)),
            // A new pair.
            step(Some(1), Some(1), false, Outcome::Reloaded, 1, (1, 0)),
            // Half-way through a rotation: new cert, old key.
            step(Some(2), Some(1), false, Outcome::Rejected, 1, (1, 1)),
            // The same bad state is not reported again.
            step(Some(2), Some(1), false, Outcome::Unchanged, 1, (1, 1)),
            step(Some(2), Some(2), false, Outcome::Reloaded, 2, (2, 1)),
            // Garbage, then a missing key, each reported once.
            step(None, Some(2), true, Outcome::Rejected, 2, (2, 2)),
            step(None, Some(2), true, Outcome::Unchanged, 2, (2, 2)),
            step(Some(2), None, false, Outcome::Rejected, 2, (2, 3)),
            step(Some(2), None, false, Outcome::Unchanged, 2, (2, 3)),
            // Back to a good pair, even the one served before.
            step(Some(0), Some(0), false, Outcome::Reloaded, 0, (3, 3)),
        ];
        for (i, s) in steps.iter().enumerate() {
            let cert = if s.garbage_cert {
                Some("garbage")
            } else {
                s.cert.map(|c| pairs[c].cert.as_str())
            };
            files.put("tls.crt", cert);
            files.put("tls.key", s.key.map(|k| pairs[k].key.as_str()));
            assert_eq!(tls.certs.check(), s.outcome, "step {i}");
            assert_eq!(served(&tls), pairs[s.served].der, "step {i}: served");
            let stats = tls.reload_stats();
            assert_eq!((stats.reloads, stats.failures), s.stats, "step {i}: stats");
        }
    }

    #[cfg(unix)]
    #[test]
    fn reload_follows_a_kubernetes_style_symlink_swap() {
        use std::os::unix::fs::symlink;
        let pairs = [pair(), pair()];
        let files = Files::new();
        for (i, p) in pairs.iter().enumerate() {
            std::fs::create_dir(files.path(&format!("..v{i}"))).unwrap();
            files.put(&format!("..v{i}/tls.crt"), Some(&p.cert));
            files.put(&format!("..v{i}/tls.key"), Some(&p.key));
        }
        symlink("..v0", files.path("..data")).unwrap();
        symlink("..data/tls.crt", files.path("tls.crt")).unwrap();
        symlink("..data/tls.key", files.path("tls.key")).unwrap();
        let tls = ServerTls::load(&files.config()).unwrap();
        assert_eq!(served(&tls), pairs[0].der);
        // The kubelet's atomic writer: a new symlink renamed over `..data`.
        symlink("..v1", files.path("..data_tmp")).unwrap();
        std::fs::rename(files.path("..data_tmp"), files.path("..data")).unwrap();
        assert_eq!(tls.certs.check(), Outcome::Reloaded);
        assert_eq!(served(&tls), pairs[1].der);
    }

    fn check_roots(bundle: Option<&str>, expect: Result<(), &str>) {
        let files = Files::new();
        files.put("ca.pem", bundle);
        let result = upstream_connector(HttpConnector::new(), Some(&files.path("ca.pem")));
        match (result, expect) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err(fragment)) => {
                let text = e.to_string();
                assert!(
                    text.contains("ca.pem") && text.contains(fragment),
                    "expected {fragment:?}, got {text:?}"
                );
            }
            (Ok(_), Err(fragment)) => panic!("accepted, expected {fragment:?}"),
            (Err(e), Ok(())) => panic!("refused: {e}"),
        }
    }

    #[test]
    fn upstream_ca_bundles_must_hold_only_certificates() {
        let two = format!("{}{}", ca_pem(), ca_pem());
        let garbage_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        check_roots(Some(&ca_pem()), Ok(()));
        check_roots(Some(&two), Ok(()));
        check_roots(None, Err("No such file"));
        check_roots(Some(""), Err("no PEM certificate"));
        check_roots(Some(&pair().key), Err("no PEM certificate"));
        check_roots(Some(garbage_pem), Err("certificate #1"));
    }

    #[test]
    fn upstream_without_a_bundle_uses_the_public_roots() {
        assert!(upstream_connector(HttpConnector::new(), None).is_ok());
    }
}
