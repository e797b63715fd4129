//! How gatehouse reaches PostgreSQL: the `store.url`, libpq's `sslmode` over rustls, and the
//! connection settings every connection (pooled, LISTEN, migration) shares.
//!
//! tokio-postgres parses libpq URLs but knows only `sslmode=disable|prefer|require` and no
//! `sslrootcert`, so [`parse`] takes those two parameters out of the query string itself and
//! hands the rest to tokio-postgres. The TLS modes map onto rustls as libpq defines them:
//!
//! | `sslmode` | TLS | certificate chain | host name | tokio-postgres mode |
//! |---|---|---|---|---|
//! | `disable` | never | – | – | `Disable` |
//! | `prefer` (default, as in libpq) | if the server offers it | not checked | not checked | `Prefer` |
//! | `require` | always | not checked (checked when `sslrootcert` is given, as libpq does) | not checked | `Require` |
//! | `verify-ca` | always | checked | not checked | `Require` |
//! | `verify-full` | always | checked | checked | `Require` |
//!
//! Chains are checked against the Mozilla roots bundled by `webpki-roots` (what upstream TLS
//! and SMTP use too, so nothing depends on the image's CA store), or, with
//! `sslrootcert=/path/ca.pem`, against that PEM bundle only (a managed database's or a
//! private CA). "Not checked" still means a real TLS session whose handshake signatures are
//! verified; it only does not know whom it talks to, which is libpq's meaning of those modes
//! and why production should say `verify-full`. Every config is built with an explicit
//! aws-lc-rs provider, the one linked into the binary.
//!
//! Messages from here never contain the URL: it may carry a password.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Shown to whoever asks for a mode gatehouse does not know.
const SSL_MODES: &str = "disable, prefer, require, verify-ca or verify-full";

/// A dead peer (a failed-over primary, a NAT that forgot us) is noticed by TCP keepalives
/// within about a minute instead of the kernel's default two hours. It matters most for the
/// LISTEN connection, which otherwise only ever reads.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Names gatehouse's sessions in `pg_stat_activity` unless the URL names them otherwise.
const APPLICATION_NAME: &str = "gatehouse";

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;
    fn from_str(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!("sslmode {other:?} is not supported ({SSL_MODES})")),
        }
    }
}

/// A URL taken apart: what tokio-postgres understands, and the TLS settings it does not.
pub struct ParsedUrl {
    pub pg: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// Everything needed to open a connection: the tokio-postgres config with gatehouse's
/// settings applied, and the TLS connector for its `sslmode`.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

/// Checks a `store.url` without connecting, for the config reader. The message names the
/// problem, never the value.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(drop)
}

/// Splits off `sslmode` and `sslrootcert` and parses the rest with tokio-postgres.
pub fn parse(url: &str) -> Result<ParsedUrl, String> {
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(
            "must be a URL starting with postgres:// or postgresql:// (e.g. \
             \"postgres://gatehouse@db:5432/gatehouse?sslmode=verify-full\")"
                .into(),
        );
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| format!("the value of {key} is not UTF-8 once decoded"))
        };
        match key {
            "sslmode" => mode = value()?.parse()?,
            "sslrootcert" => {
                let path = value()?;
                if path.is_empty() {
                    return Err("sslrootcert must name a PEM file".into());
                }
                root_cert = Some(PathBuf::from(path));
            }
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    // The driver's message ("invalid connection string") names the problem in its source
    // ("unknown option `x`", "invalid value for option `port`"); neither quotes a value.
    let pg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(": {c}"));
        format!("is not a PostgreSQL URL gatehouse can use ({e}{cause})")
    })?;
    if pg.get_hosts().is_empty() {
        return Err("names no host".into());
    }
    if pg.get_dbname().is_none_or(str::is_empty) {
        return Err("names no database (postgres://user@host/DATABASE)".into());
    }
    Ok(ParsedUrl {
        pg,
        mode,
        root_cert,
    })
}

impl Target {
    /// Parses the URL, applies the connection settings and builds the TLS connector (which
    /// reads `sslrootcert`, if any).
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Result<Target, String> {
        let ParsedUrl {
            mut pg,
            mode,
            root_cert,
        } = parse(url)?;
        pg.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        pg.connect_timeout(connect_timeout)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        // The server enforces the statement timeout, so a statement stuck behind a lock is
        // cancelled there and its connection comes back usable. Set through the startup
        // options (after any the URL has) rather than a SET per connection: it then holds on
        // every connection from its first statement, pooled or not.
        let timeout = format!(
            "-c statement_timeout={}",
            statement_timeout.as_millis().max(1)
        );
        let options = match pg.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeout}"),
            _ => timeout,
        };
        pg.options(options);
        let tls = MakeRustlsConnect::new(client_config(mode, root_cert.as_deref())?);
        Ok(Target { pg, tls, mode })
    }
}

impl Target {
    /// Whether every host is this machine (loopback or a Unix socket), where an unchecked
    /// certificate crosses no network.
    pub fn is_local(&self) -> bool {
        self.pg.get_hosts().iter().all(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => true,
        })
    }
}

/// The one crypto provider linked into the binary.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls client config for a mode; see the table in the module docs.
pub fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let provider = provider();
    let roots = Arc::new(match root_cert {
        Some(path) => load_roots(path)?,
        None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    });
    let webpki = || {
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("cannot build the certificate verifier: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        // A disabled mode never starts TLS; the verifier is never asked.
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(Unverified(provider.clone()))
        }
        (SslMode::Require, Some(_)) | (SslMode::VerifyCa, _) => Arc::new(ChainOnly(webpki()?)),
        (SslMode::VerifyFull, _) => webpki()?,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Every certificate in a PEM bundle, as trust anchors. Anything unusable is an error rather
/// than skipped: a silently dropped root shows up much later as an outage.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let name = path.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {name}: cannot read: {e}"))?;
    for (i, cert) in certs.enumerate() {
        let cert = cert.map_err(|e| format!("sslrootcert {name}: not a PEM bundle: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {name}: certificate #{}: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {name}: contains no PEM certificate"));
    }
    Ok(roots)
}

/// `verify-ca` (and `require` with a root file): the chain must lead to a trusted root, the
/// name may be anything. webpki checks the name last, after the chain and validity, so a
/// name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` as libpq means them: encrypted, but whoever answers is accepted.
/// Handshake signatures are still verified, so the session is a real TLS session with the
/// holder of the presented certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_them() {
        // (url, Ok or a fragment of the error)
        fn check(url: &str, expect: Result<(), &str>) {
            let got = check_url(url);
            match (&got, expect) {
                (Ok(()), Ok(())) => {}
                (Err(message), Err(fragment)) => {
                    assert!(message.contains(fragment), "{url}: {message}");
                    assert!(!message.contains("s3cret"), "{url}: leaks: {message}");
                }
                _ => panic!("{url}: got {got:?}, expected {expect:?}"),
            }
        }
        check("postgres://gatehouse:s3cret@db:5432/gatehouse", Ok(()));
        check("postgresql://db/gatehouse?sslmode=verify-full", Ok(()));
        check(
            "postgres://u:s3cret@db/g?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
            Ok(()),
        );
        check(
            "postgres://127.0.0.1:5432/test?options=-csearch_path%3Dx",
            Ok(()),
        );
        check("mysql://u:s3cret@db/g", Err("postgres://"));
        check("db:5432/gatehouse", Err("postgres://"));
        check("postgres://u:s3cret@db/g?sslmode=allow", Err("verify-full"));
        check(
            "postgres://u:s3cret@db/g?sslmode=verify_full",
            Err("not supported"),
        );
        check("postgres://u:s3cret@db/g?sslrootcert=", Err("PEM"));
        check("postgres://u:s3cret@db/g?bogus=1", Err("bogus"));
        check("postgres://u:s3cret@db:notaport/g", Err("port"));
        check("postgres://u:s3cret@db", Err("no database"));
    }

    #[test]
    fn modes_map_onto_tokio_postgres_and_settings_apply() {
        use tokio_postgres::config::SslMode as Pg;
        for (mode, expect) in [
            ("disable", Pg::Disable),
            ("prefer", Pg::Prefer),
            ("require", Pg::Require),
            ("verify-ca", Pg::Require),
            ("verify-full", Pg::Require),
        ] {
            let url = format!("postgres://u@db/g?sslmode={mode}&options=-csearch_path%3Dx");
            let target =
                Target::new(&url, Duration::from_secs(3), Duration::from_millis(1500)).unwrap();
            assert_eq!(target.pg.get_ssl_mode(), expect, "{mode}");
            assert_eq!(
                target.pg.get_options(),
                Some("-csearch_path=x -c statement_timeout=1500"),
                "{mode}"
            );
            assert_eq!(
                target.pg.get_connect_timeout(),
                Some(&Duration::from_secs(3))
            );
            assert_eq!(target.pg.get_application_name(), Some(APPLICATION_NAME));
        }
        let target = Target::new(
            "postgres://u@db/g",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(target.mode, SslMode::Prefer, "libpq's default");
        let Err(e) = Target::new(
            "postgres://u@db/g?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            Duration::from_secs(1),
            Duration::from_secs(1),
        ) else {
            panic!("a missing sslrootcert must fail");
        };
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    /// The verifiers, against a real rustls server over an in-memory pipe: a CA, a server
    /// certificate for `localhost` signed by it, and a stranger's CA.
    #[tokio::test]
    async fn tls_modes_check_what_libpq_checks() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use rustls::pki_types::PrivateKeyDer;

        fn ca() -> CertifiedIssuer<'static, KeyPair> {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        }
        let ours = ca();
        let stranger = ca();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ours)
            .unwrap();
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap(),
        );
        let dir = tempfile::tempdir().unwrap();
        let ours_pem = dir.path().join("ours.pem");
        let stranger_pem = dir.path().join("stranger.pem");
        std::fs::write(&ours_pem, ours.pem()).unwrap();
        std::fs::write(&stranger_pem, stranger.pem()).unwrap();

        async fn handshake(
            server: Arc<rustls::ServerConfig>,
            client: ClientConfig,
            name: &str,
        ) -> bool {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let name = ServerName::try_from(name.to_string()).unwrap();
            let accept = tokio::spawn(async move { acceptor.accept(b).await.is_ok() });
            let connected = connector.connect(name, a).await.is_ok();
            let _ = accept.await;
            connected
        }
        // (mode, sslrootcert, name connected to, handshake succeeds)
        let cases: &[(SslMode, Option<&Path>, &str, bool)] = &[
            (SslMode::Prefer, None, "127.0.0.1", true),
            (SslMode::Require, None, "127.0.0.1", true),
            (SslMode::Require, Some(&ours_pem), "127.0.0.1", true),
            (SslMode::Require, Some(&stranger_pem), "localhost", false),
            (SslMode::VerifyCa, None, "localhost", false),
            (SslMode::VerifyCa, Some(&ours_pem), "127.0.0.1", true),
            (SslMode::VerifyCa, Some(&stranger_pem), "localhost", false),
            (SslMode::VerifyFull, None, "localhost", false),
            (SslMode::VerifyFull, Some(&ours_pem), "localhost", true),
            (SslMode::VerifyFull, Some(&ours_pem), "127.0.0.1", false),
            (SslMode::VerifyFull, Some(&stranger_pem), "localhost", false),
        ];
        for &(mode, root, name, ok) in cases {
            let client = client_config(mode, root).unwrap();
            assert_eq!(
                handshake(server.clone(), client, name).await,
                ok,
                "{mode:?} with {root:?} to {name}"
            );
        }
    }
}
