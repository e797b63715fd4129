//! TLS (issue 5, point 3): the listener terminates TLS with ALPN h2 and http/1.1, follows
//! certificate rotations on disk without a restart, keeps its certificate when the new files
//! are bad, and reaches an `https://` upstream that a private CA signed.
//!
//! Certificates are generated at test time by rcgen under a test CA that the test clients
//! trust. The TLS gatehouse gets a plain admin listener, which the harness polls for
//! readiness; its own HTTP client does not speak TLS, so these tests bring a rustls client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::app::{App, Clock};
use gatehouse::config::Config;
use gatehouse::tls::ReloadStats;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::harness::{Gatehouse, ROUTES, Reply, Setup, base_config};

/// How long a test waits for something that should happen within a few reload intervals;
/// a safety net against hangs, never a synchronisation point.
const PATIENCE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A test certificate authority.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate for `localhost` and `127.0.0.1`, its key, and the DER a client sees.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            // The chain as cert-manager writes it: leaf first, then the issuer.
            cert: format!("{}{}", cert.pem(), self.ca.pem()),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client that trusts this CA and offers `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The certificate files gatehouse is pointed at.
struct CertFiles {
    dir: tempfile::TempDir,
}

impl CertFiles {
    fn new(leaf: &Leaf) -> CertFiles {
        let files = CertFiles {
            dir: tempfile::tempdir().unwrap(),
        };
        files.install(leaf);
        files
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new pair the way rotation tools do, each file renamed into place, so the
    /// reloader never sees a half-written file (it may see the new cert with the old key).
    fn install(&self, leaf: &Leaf) {
        replace(&self.cert(), &leaf.cert);
        replace(&self.key(), &leaf.key);
    }
}

fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// gatehouse with TLS on the main listener (reloading every 100ms) and a plain admin
/// listener, in front of the echo upstream.
async fn start_tls(files: &CertFiles, env: &[(&str, &str)]) -> Gatehouse {
    let cert = files.cert().display().to_string();
    let key = files.key().display().to_string();
    let mut all = vec![
        ("GATEHOUSE_SERVER_ADMIN_LISTEN", "127.0.0.1:0"),
        ("GATEHOUSE_SERVER_TLS_CERT", cert.as_str()),
        ("GATEHOUSE_SERVER_TLS_KEY", key.as_str()),
        ("GATEHOUSE_SERVER_TLS_RELOAD_INTERVAL", "100ms"),
    ];
    all.extend_from_slice(env);
    let echo = gatehouse::demo::echo_upstream().await.unwrap();
    Gatehouse::launch(Setup {
        admin: true,
        env: &all,
        ..Setup::new(echo, ROUTES)
    })
    .await
}

async fn connect(
    addr: SocketAddr,
    client: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(client)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// What one TLS exchange showed: the negotiated protocol, the served leaf and the reply.
struct Exchange {
    alpn: Option<Vec<u8>>,
    leaf: Vec<u8>,
    version: Version,
    reply: Reply,
}

/// A GET on a fresh TLS connection, in HTTP/2 when ALPN chose it, else HTTP/1.1.
async fn tls_get(addr: SocketAddr, client: Arc<ClientConfig>, path: &str) -> Exchange {
    let stream = connect(addr, client)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(request).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(request).await.unwrap()
    };
    let version = response.version();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Exchange {
        alpn,
        leaf,
        version,
        reply: Reply {
            request: format!("GET {path} over TLS ({version:?})"),
            status: parts.status,
            headers: parts.headers,
            body,
        },
    }
}

/// The leaf certificate a fresh handshake is served.
async fn served_leaf(addr: SocketAddr, client: &Arc<ClientConfig>) -> Vec<u8> {
    let stream = connect(addr, client.clone())
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Polls fresh handshakes until `leaf` is served.
async fn wait_for_leaf(addr: SocketAddr, client: &Arc<ClientConfig>, leaf: &Leaf) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while served_leaf(addr, client).await != leaf.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn stats(gh: &Gatehouse) -> ReloadStats {
    gh.app.tls.as_ref().expect("TLS is on").reload_stats()
}

/// Polls the reload counters until `done` holds: how a test knows a check has run.
async fn wait_for_stats(gh: &Gatehouse, done: impl Fn(ReloadStats) -> bool) -> ReloadStats {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = stats(gh);
        if done(now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload counters stuck at {now:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn alpn_h2_and_http1_are_both_served() {
    let pki = Pki::new("test CA");
    let leaf = pki.leaf("first");
    let files = CertFiles::new(&leaf);
    let gh = start_tls(&files, &[]).await;

    /// What a client offers, what ALPN settles on, and the HTTP version then spoken.
    type Case = (&'static [&'static [u8]], Option<&'static [u8]>, Version);
    let cases: [Case; 4] = [
        (&[b"h2", b"http/1.1"], Some(b"h2"), Version::HTTP_2),
        (&[b"h2"], Some(b"h2"), Version::HTTP_2),
        (&[b"http/1.1"], Some(b"http/1.1"), Version::HTTP_11),
        // A client that offers no ALPN at all (old tooling) is served HTTP/1.1.
        (&[], None, Version::HTTP_11),
    ];
    for (offered, negotiated, version) in cases {
        let x = tls_get(gh.addr, pki.client(offered), "/public/tls?q=1").await;
        assert_eq!(x.alpn.as_deref(), negotiated, "offered {offered:?}");
        assert_eq!(x.version, version, "offered {offered:?}");
        assert_eq!(x.leaf, leaf.der);
        x.reply.expect(200);
        assert_eq!(x.reply.json()["path"], "/public/tls", "{}", x.reply.text());
        // The upstream learns that the client came over TLS.
        assert_eq!(
            x.reply.upstream_header("x-forwarded-proto").as_deref(),
            Some("https"),
            "offered {offered:?}: {}",
            x.reply.text()
        );
    }
    // Gatehouse's own endpoints are served over TLS too (ops sit on the admin listener).
    let x = tls_get(gh.addr, pki.client(&[b"h2"]), "/auth/me").await;
    x.reply.expect_error(401, "TOKEN_MISSING");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_clients() {
    let pki = Pki::new("test CA");
    let (first, second) = (pki.leaf("first"), pki.leaf("second"));
    let files = CertFiles::new(&first);
    let gh = start_tls(&files, &[]).await;
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(served_leaf(gh.addr, &client).await, first.der);

    // A connection made before the rotation.
    let stream = connect(gh.addr, client.clone()).await.unwrap();
    let (mut before, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    files.install(&second);
    wait_for_leaf(gh.addr, &client, &second).await;
    assert_eq!(stats(&gh).reloads, 1, "{:?}", stats(&gh));

    // The older connection keeps working on the certificate it was handshaken with.
    let request = Request::get("/public/still-here")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = before.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // And a new client is served by the new certificate in full.
    let x = tls_get(gh.addr, pki.client(&[b"h2"]), "/public/after").await;
    assert_eq!(x.leaf, second.der);
    x.reply.expect(200);
}

#[tokio::test]
async fn a_bad_certificate_at_reload_keeps_the_old_one() {
    let pki = Pki::new("test CA");
    let (first, second) = (pki.leaf("first"), pki.leaf("second"));
    let files = CertFiles::new(&first);
    let gh = start_tls(&files, &[]).await;
    let client = pki.client(&[b"h2", b"http/1.1"]);

    // Garbage in the certificate file.
    replace(&files.cert(), "this is not a certificate\n");
    wait_for_stats(&gh, |s| s.failures >= 1).await;
    assert_eq!(served_leaf(gh.addr, &client).await, first.der);

    // A certificate whose key is not the one beside it.
    replace(&files.cert(), &second.cert);
    wait_for_stats(&gh, |s| s.failures >= 2).await;
    assert_eq!(served_leaf(gh.addr, &client).await, first.der);

    // The key file disappears.
    std::fs::remove_file(files.key()).unwrap();
    let s = wait_for_stats(&gh, |s| s.failures >= 3).await;
    assert_eq!(s.reloads, 0, "{s:?}");
    let x = tls_get(gh.addr, client.clone(), "/public/x").await;
    assert_eq!(x.leaf, first.der);
    x.reply.expect(200);

    // Once the files are good again, the new certificate is served.
    replace(&files.key(), &second.key);
    wait_for_leaf(gh.addr, &client, &second).await;

    // Operators see both outcomes in /metrics.
    let stats = wait_for_stats(&gh, |s| s.reloads >= 1).await;
    let metrics = gh.admin_send(http::Method::GET, "/metrics").await.text();
    for (result, n) in [("ok", stats.reloads), ("failed", stats.failures)] {
        let line = format!("gatehouse_tls_reloads_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
}

/// A config reload (SIGHUP) checks the certificate files at once, may point at new ones,
/// refuses unusable ones whole, and cannot turn TLS off while running.
#[tokio::test]
async fn a_config_reload_checks_and_switches_the_certificate_files() {
    use gatehouse::config::Purpose;
    use gatehouse::reload::{Outcome, Trigger};
    let pki = Pki::new("test CA");
    let (first, second, third) = (pki.leaf("first"), pki.leaf("second"), pki.leaf("third"));
    let files = CertFiles::new(&first);
    // The background check is a day away: whatever changes below, the reload did it.
    let gh = start_tls(&files, &[("GATEHOUSE_SERVER_TLS_RELOAD_INTERVAL", "1d")]).await;
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(served_leaf(gh.addr, &client).await, first.der);

    let reload = |cert: Option<&Path>, key: Option<&Path>| {
        let text = base_config(gh.upstream, &gh.dir.path().join("store"), ROUTES);
        let mut env = vec![(
            "GATEHOUSE_SERVER_ADMIN_LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        )];
        for (name, path) in [("CERT", cert), ("KEY", key)] {
            if let Some(path) = path {
                let value = path.display().to_string();
                env.push((format!("GATEHOUSE_SERVER_TLS_{name}"), value));
            }
        }
        let loaded = Config::check(&text, env, Purpose::Serve);
        gh.current.apply(loaded, Trigger::Signal)
    };

    // New paths: served as soon as the reload returns.
    let moved = CertFiles::new(&second);
    let outcome = reload(Some(&moved.cert()), Some(&moved.key()));
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    assert_eq!(served_leaf(gh.addr, &client).await, second.der);

    // The same paths with new contents: a reload picks them up without waiting a day.
    moved.install(&third);
    let outcome = reload(Some(&moved.cert()), Some(&moved.key()));
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    assert_eq!(served_leaf(gh.addr, &client).await, third.der);

    // Paths to nothing: the whole reload is refused, the certificate stays.
    let gone = gh.dir.path().join("missing.crt");
    let Outcome::Refused(reasons) = reload(Some(&gone), Some(&moved.key())) else {
        panic!("a reload with a missing certificate was applied");
    };
    assert!(reasons.join("\n").contains("missing.crt"), "{reasons:?}");
    assert_eq!(served_leaf(gh.addr, &client).await, third.der);

    // TLS off needs a restart: named, and the listener keeps speaking TLS.
    let Outcome::Applied { needs_restart, .. } = reload(None, None) else {
        panic!("refused");
    };
    assert_eq!(needs_restart, ["server.tls"]);
    assert_eq!(served_leaf(gh.addr, &client).await, third.der);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed_without_an_answer() {
    let pki = Pki::new("test CA");
    let files = CertFiles::new(&pki.leaf("first"));
    let gh = start_tls(&files, &[]).await;

    let exchange = async {
        let mut stream = TcpStream::connect(gh.addr).await?;
        stream
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map(|_| answer)
    };
    match tokio::time::timeout(PATIENCE, exchange).await {
        // At most a TLS alert, never an HTTP response in clear text.
        Ok(Ok(answer)) => assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        ),
        // A reset is as good as a close.
        Ok(Err(_)) => {}
        Err(_) => panic!("the TLS port kept a plain-HTTP connection open"),
    }
    // The listener is unharmed.
    tls_get(gh.addr, pki.client(&[b"h2"]), "/public/x")
        .await
        .reply
        .expect(200);
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_timeout() {
    let pki = Pki::new("test CA");
    let files = CertFiles::new(&pki.leaf("first"));
    let gh = start_tls(&files, &[("GATEHOUSE_SERVER_HEADER_READ_TIMEOUT", "200ms")]).await;

    // Connects and never says hello.
    let mut silent = TcpStream::connect(gh.addr).await.unwrap();
    // Others are served meanwhile: the handshake does not run in the accept loop.
    tls_get(gh.addr, pki.client(&[b"http/1.1"]), "/public/x")
        .await
        .reply
        .expect(200);
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PATIENCE, silent.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("the server wrote to a client that never said hello"),
        Err(_) => panic!("a silent client held its connection past the handshake timeout"),
    }
}

#[tokio::test]
async fn bad_files_at_startup_are_a_clear_error() {
    let pki = Pki::new("test CA");
    let (first, second) = (pki.leaf("first"), pki.leaf("second"));
    let files = CertFiles::new(&first);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let missing = missing.as_str();
    let cert = files.cert().display().to_string();
    let key = files.key().display().to_string();
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, &second.key).unwrap();
    let wrong_key = wrong_key.display().to_string();

    /// Env overrides, and the fragments the start-up error must contain.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            &[
                ("GATEHOUSE_SERVER_TLS_CERT", missing),
                ("GATEHOUSE_SERVER_TLS_KEY", &key),
            ],
            &["server.tls", "missing.pem"],
        ),
        (
            &[
                ("GATEHOUSE_SERVER_TLS_CERT", &cert),
                ("GATEHOUSE_SERVER_TLS_KEY", &wrong_key),
            ],
            &["server.tls", "wrong.key", "does not match"],
        ),
        (
            &[
                ("GATEHOUSE_SERVER_TLS_CERT", &key),
                ("GATEHOUSE_SERVER_TLS_KEY", &key),
            ],
            &["server.tls", "tls.key", "no PEM certificate"],
        ),
        (
            &[("GATEHOUSE_UPSTREAM_CA_FILE", missing)],
            &["upstream", "missing.pem"],
        ),
    ];
    for (i, (env, expect)) in cases.iter().enumerate() {
        let store = dir.path().join(format!("store-{i}"));
        let text = base_config("127.0.0.1:1".parse().unwrap(), &store, ROUTES);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::from_toml(&text, env).unwrap();
        let error = match App::start(config, Clock::System).await {
            Ok(_) => panic!("case {i}: started with bad files"),
            Err(e) => e.to_string(),
        };
        for fragment in *expect {
            assert!(error.contains(fragment), "case {i}: {error:?}");
        }
    }
}

/// An HTTPS upstream with a certificate from `pki`: answers every request with a JSON
/// description shaped like the echo upstream's.
async fn tls_upstream(pki: &Pki) -> SocketAddr {
    let leaf = pki.leaf("upstream");
    let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(describe))
                    .await;
            });
        }
    });
    addr
}

async fn describe(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), serde_json::json!([value]))
        })
        .collect();
    let body = serde_json::json!({
        "upstream": "echo",
        "tls": true,
        "path": request.uri().path(),
        "headers": headers,
    });
    Ok(Response::new(Full::new(Bytes::from(body.to_string()))))
}

#[tokio::test]
async fn an_https_upstream_signed_by_a_private_ca() {
    let pki = Pki::new("upstream CA");
    let upstream = tls_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    // The bundle holds an unrelated CA as well: every root in it is trusted.
    let bundle = dir.path().join("ca.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", Pki::new("other CA").ca_pem(), pki.ca_pem()),
    )
    .unwrap();
    let bundle = bundle.display().to_string();
    let url = format!("https://localhost:{}", upstream.port());

    // The readiness check the harness waits for goes through TLS too.
    let gh = Gatehouse::start_with(
        upstream,
        ROUTES,
        &[
            ("GATEHOUSE_UPSTREAM_URL", &url),
            ("GATEHOUSE_UPSTREAM_CA_FILE", &bundle),
            ("GATEHOUSE_UPSTREAM_HEALTH_PATH", "/healthz"),
        ],
    )
    .await;
    let r = gh.get("/public/over-tls").await;
    r.expect(200);
    assert_eq!(r.json()["tls"], true, "{}", r.text());
    assert_eq!(r.json()["path"], "/public/over-tls", "{}", r.text());
    assert_eq!(r.upstream_header("host").as_deref(), Some(&url[8..]));

    // Without the bundle the public roots are used, and they do not know this CA.
    let untrusting =
        Gatehouse::start_with(upstream, ROUTES, &[("GATEHOUSE_UPSTREAM_URL", &url)]).await;
    untrusting
        .get("/public/over-tls")
        .await
        .expect_error(502, "UPSTREAM_UNAVAILABLE");
}
