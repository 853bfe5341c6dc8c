//! Shared harness for the end-to-end tests: a test PKI (CA, server and client
//! certificates made with rcgen at test time), TLS and plain TCP backends on
//! 127.0.0.1 port 0, an in-process router built from TOML text with a JSON
//! access log to watch, and ClientHello builders (real captured fixtures,
//! rustls-captured hellos for any name, re-framing into several records).
//!
//! Nothing here sleeps to wait for readiness: every wait polls an event with a
//! bound ([`WAIT`]).

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sniroute::server::{Control, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Upper bound for any wait on an event (log line, EOF, backend data): far
/// above what a loaded 2-core CI runner needs, low enough to fail fast.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often the access log is polled: a line is written within a few ms of
/// the connection's end, so 10 ms keeps waits short without spinning.
pub const POLL: Duration = Duration::from_millis(10);

/// What every TLS backend sends first after the handshake, then it echoes.
pub const GREETING: &[u8] = b"hello from the backend\n";

// ---------------------------------------------------------------------------
// Fixtures

/// A captured real ClientHello from `tests/fixtures/clienthello/NAME`
/// (all name `fixture.example` except `openssl-nosni.bin`).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clienthello")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The SNI every captured fixture names.
pub const FIXTURE_SNI: &str = "fixture.example";

// ---------------------------------------------------------------------------
// PKI

/// A CA, a server certificate for `app.test`, `*.wild.test` and
/// `a.b.wild.test`, and a client certificate, all signed by the CA.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub server_der: CertificateDer<'static>,
    pub server_pem: String,
    pub server_key_der: Vec<u8>,
    pub server_key_pem: String,
    pub client_der: CertificateDer<'static>,
    pub client_pem: String,
    pub client_key_der: Vec<u8>,
    pub client_key_pem: String,
}

/// Names on the server certificate. A TLS wildcard covers one label only, so
/// the two-label name the router's `*.wild.test` also matches is listed too.
pub const SERVER_NAMES: [&str; 3] = ["app.test", "*.wild.test", "a.b.wild.test"];

fn named(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf(names: &[&str], cn: &str, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = named(cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    params
}

/// The process-wide test PKI (made once; key generation is the slow part).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name = named("sniroute test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server = leaf(
            &SERVER_NAMES,
            "app.test",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
        .signed_by(&server_key, &issuer)
        .unwrap();

        let client_key = KeyPair::generate().unwrap();
        let client = leaf(
            &["client.test"],
            "client.test",
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .signed_by(&client_key, &issuer)
        .unwrap();

        Pki {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            server_der: server.der().clone(),
            server_pem: server.pem(),
            server_key_der: server_key.serialize_der(),
            server_key_pem: server_key.serialize_pem(),
            client_der: client.der().clone(),
            client_pem: client.pem(),
            client_key_der: client_key.serialize_der(),
            client_key_pem: client_key.serialize_pem(),
        }
    })
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        for (name, text) in [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server_pem),
            ("server.key", &self.server_key_pem),
            ("client.pem", &self.client_pem),
            ("client.key", &self.client_key_pem),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca_der.clone()).unwrap();
    Arc::new(roots)
}

/// A backend's TLS config: the server certificate; with `require_client_cert`,
/// client certificates signed by the test CA are required (mTLS).
pub fn server_config(require_client_cert: bool) -> Arc<ServerConfig> {
    let pki = pki();
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(), provider())
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone()));
    Arc::new(
        builder
            .with_single_cert(vec![pki.server_der.clone()], key)
            .unwrap(),
    )
}

/// A client's TLS config trusting the test CA; with `client_cert`, it
/// presents the test client certificate.
pub fn client_config(client_cert: bool) -> Arc<ClientConfig> {
    let pki = pki();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots());
    let config = if client_cert {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.client_key_der.clone()));
        builder
            .with_client_auth_cert(vec![pki.client_der.clone()], key)
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Connects to `addr` and completes a TLS handshake for `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    client_cert: bool,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect(addr).await;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(client_config(client_cert))
        .connect(name, tcp)
        .await
}

// ---------------------------------------------------------------------------
// Backends

/// Accepts on 127.0.0.1:0 forever, running `handler` on each connection.
pub async fn spawn_backend<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(handler(stream));
        }
    });
    addr
}

/// A TLS backend: after the handshake it sends [`GREETING`], then echoes
/// until EOF. With `require_client_cert` it refuses clients without a
/// certificate signed by the test CA (rustls sends the alert).
pub async fn spawn_tls_backend(require_client_cert: bool) -> SocketAddr {
    let acceptor = TlsAcceptor::from(server_config(require_client_cert));
    spawn_backend(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            if tls.write_all(GREETING).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tls.shutdown().await;
        }
    })
    .await
}

/// The body an HTTPS backend answers every request with.
pub const HTTP_BODY: &str = "hello from app.test over mTLS\n";

/// An mTLS HTTPS backend (HTTP/1.1, no ALPN): answers one request with
/// [`HTTP_BODY`] and closes. For `curl` through the router.
pub async fn spawn_https_backend() -> SocketAddr {
    let acceptor = TlsAcceptor::from(server_config(true));
    spawn_backend(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTTP_BODY}",
                HTTP_BODY.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

/// A plain TCP backend that reads each connection to EOF, reports every byte
/// it received on the channel, then closes.
pub async fn spawn_recording_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = spawn_backend(move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            let _ = tcp.read_to_end(&mut got).await;
            let _ = tx.send(got);
        }
    })
    .await;
    (addr, rx)
}

/// A plain TCP backend that echoes every byte until EOF, then closes.
pub async fn spawn_echo_backend() -> SocketAddr {
    spawn_backend(|tcp| async move {
        let (mut r, mut w) = tcp.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Waits (bounded) for the next connection's bytes from a recording backend.
pub async fn recorded(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the backend got no connection in time")
        .expect("backend channel closed")
}

/// An address nothing listens on, so connections to it are refused: port 1
/// (tcpmux, never handed out for port 0, which every test listener binds)
/// on a loopback address of its own. A port bound and then released could
/// be taken by a listener of a test running alongside.
pub fn refusing_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let [hi, lo] = n.to_be_bytes();
    SocketAddr::from(([127, 1, hi, lo], 1))
}

/// A listener whose accept queue is full and never drained, so new SYNs to it
/// are dropped and a connect hangs until its timeout.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

/// Connect attempts to fill the queue before giving up (a backlog of 0 holds
/// one or two connections on Linux).
const BLACKHOLE_FILL_ATTEMPTS: usize = 16;
/// A loopback connect to a listener with room completes in microseconds; one
/// that has not after this long had its SYN dropped.
const BLACKHOLE_PROBE: Duration = Duration::from_millis(300);

/// Makes a [`Blackhole`]; `None` if the kernel does not drop SYNs to a full
/// queue on loopback (then the caller skips, saying so).
pub fn blackhole() -> Option<Blackhole> {
    use socket2::{Domain, Protocol, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).ok()?;
    listener.listen(0).ok()?;
    let addr = listener.local_addr().ok()?.as_socket()?;
    let mut fillers = Vec::new();
    for _ in 0..BLACKHOLE_FILL_ATTEMPTS {
        match std::net::TcpStream::connect_timeout(&addr, BLACKHOLE_PROBE) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Some(Blackhole {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                });
            }
            Err(_) => return None,
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The router under test

/// An in-process sniroute serving a config written to a temp file.
pub struct Router {
    /// The IPv4 listener (127.0.0.1, port chosen by the kernel).
    pub addr: SocketAddr,
    /// The IPv6 listener ([::1]) when asked for.
    pub addr6: Option<SocketAddr>,
    /// The first plain-HTTP listener, when the body has `[http] listen`.
    pub http_addr: Option<SocketAddr>,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    pub tx: mpsc::Sender<Control>,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// What this router's `/metrics` would answer now.
    scraper: Box<dyn Fn() -> String + Send + Sync>,
    _dir: tempfile::TempDir,
}

/// Sections the harness adds unless the test's TOML has its own: no bans, no
/// rate limit, no metrics endpoint, a JSON access log at `log`, and an admin
/// socket at `admin` (none without).
pub fn default_sections(body: &str, log: &Path, admin: Option<&Path>) -> String {
    let mut out = String::new();
    let admin = admin.map_or(String::new(), |path| path.display().to_string());
    let defaults = [
        ("[ban]", "enabled = false\nstate_file = \"\"\n".to_owned()),
        ("[rate_limit]", "per_ip = 0\n".to_owned()),
        ("[metrics]", "listen = \"\"\n".to_owned()),
        ("[admin]", format!("socket = {admin:?}\n")),
        (
            "[log]",
            format!(
                "access = {:?}\nformat = \"json\"\n",
                log.display().to_string()
            ),
        ),
    ];
    for (header, keys) in defaults {
        if !body.contains(header) {
            out.push_str(&format!("\n{header}\n{keys}"));
        }
    }
    out
}

/// Whether this host can listen on ::1.
pub fn ipv6_available() -> bool {
    StdListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Starts a router listening on 127.0.0.1:0 with `body` (routes, `[limits]`,
/// ...; no top-level keys) plus the harness's default sections.
pub async fn spawn_router(body: &str) -> Router {
    start_router(body, false).await
}

/// Like [`spawn_router`], also listening on [::1]:0; `None` (after a printed
/// note) if the host has no IPv6 loopback.
pub async fn spawn_router_v6(body: &str) -> Option<Router> {
    if !ipv6_available() {
        eprintln!("NOTE: no IPv6 loopback on this host; skipping the IPv6 part");
        return None;
    }
    Some(start_router(body, true).await)
}

async fn start_router(body: &str, v6: bool) -> Router {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let config_path = dir.path().join("sniroute.toml");
    let listen = if v6 {
        r#"listen = ["127.0.0.1:0", "[::1]:0"]"#
    } else {
        r#"listen = ["127.0.0.1:0"]"#
    };
    let text = format!(
        "{listen}\n\n{body}\n{}",
        default_sections(body, &log_path, None)
    );
    std::fs::write(&config_path, &text).unwrap();
    let config = match sniroute::config::parse_str(&text) {
        Ok(config) => config,
        Err(diagnostics) => panic!("config rejected: {diagnostics:?}\n---\n{text}"),
    };
    let server = Server::bind(config, Some(config_path.clone())).unwrap();
    let addrs = server.local_addrs();
    let addr = *addrs.iter().find(|a| a.is_ipv4()).unwrap();
    let addr6 = addrs.iter().find(|a| a.is_ipv6()).copied();
    let http_addr = server
        .local_addrs_of(sniroute::conn::Protocol::Http)
        .first()
        .copied();
    let scraper = Box::new(server.scraper());
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(server.run(rx));
    Router {
        addr,
        addr6,
        http_addr,
        log_path,
        config_path,
        tx,
        task,
        scraper,
        _dir: dir,
    }
}

impl Router {
    /// One scrape: what its `/metrics` endpoint would answer now.
    pub fn scrape(&self) -> String {
        (self.scraper)()
    }

    /// Every access-log line so far, parsed.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        // Only whole lines: the writer may be mid-write on the last one.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }

    /// Waits (bounded) for the access-log line of the connection whose client
    /// side was `client` (the test socket's local address).
    pub async fn wait_outcome(&self, client: SocketAddr) -> serde_json::Value {
        let want = SocketAddr::new(client.ip().to_canonical(), client.port()).to_string();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|v| v["client"].as_str() == Some(want.as_str()))
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no access-log line for {want} within {WAIT:?}; log so far:\n{}",
                std::fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `Stop` and waits (bounded) for the server to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.tx.send(Control::Stop).await;
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
    }
}

// ---------------------------------------------------------------------------
// Clients

/// A TCP connection with TCP_NODELAY (so each write is its own segment).
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until EOF or reset (bounded), returning every byte received.
pub async fn read_all<R: AsyncReadExt + Unpin>(stream: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                // A reset is how a refusal with unread input may end.
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the connection was not closed in time");
    got
}

/// Connects, writes `bytes` (ignoring write errors: the router may close
/// first), reads to EOF. Returns the client's local address and what it got.
pub async fn send_and_read_all(addr: SocketAddr, bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut s = connect(addr).await;
    let local = s.local_addr().unwrap();
    let _ = s.write_all(bytes).await;
    let got = read_all(&mut s).await;
    (local, got)
}

// ---------------------------------------------------------------------------
// Hello builders

/// The ClientHello a rustls client sends for `sni`, captured by letting it
/// connect to a local listener that reads the first record and hangs up.
pub async fn rustls_hello(sni: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _ = TlsConnector::from(client_config(false))
            .connect(name, tcp)
            .await;
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x16, "rustls sent a non-handshake record first");
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut hello = header.to_vec();
    hello.resize(5 + len, 0);
    s.read_exact(&mut hello[5..]).await.unwrap();
    drop(s);
    client.abort();
    hello
}

/// The handshake-layer bytes of `hello`: every record's payload, concatenated.
pub fn handshake_message(hello: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = hello;
    while rest.len() >= 5 {
        assert_eq!(rest[0], 0x16, "not a handshake record");
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        out.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes after the records");
    out
}

/// `hello` re-framed into handshake records whose payloads have the given
/// sizes, the last record taking the rest. Same record-layer version.
pub fn reframe(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
    let msg = handshake_message(hello);
    let mut out = Vec::new();
    let mut rest = &msg[..];
    let mut push = |chunk: &[u8]| {
        out.extend_from_slice(&[0x16, hello[1], hello[2]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    };
    for &size in sizes {
        assert!(size > 0 && size < rest.len(), "bad record size {size}");
        push(&rest[..size]);
        rest = &rest[size..];
    }
    push(rest);
    out
}

/// Where the server_name extension starts (its type field) inside the
/// handshake message of `hello`.
pub fn sni_extension_offset(hello: &[u8]) -> usize {
    let msg = handshake_message(hello);
    let be16 = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]) as usize;
    // type(1) length(3) legacy_version(2) random(32)
    let mut at = 4 + 2 + 32;
    at += 1 + msg[at] as usize; // session_id
    at += 2 + be16(at); // cipher_suites
    at += 1 + msg[at] as usize; // compression_methods
    let end = at + 2 + be16(at);
    at += 2;
    while at + 4 <= end {
        if be16(at) == 0 {
            return at;
        }
        at += 4 + be16(at + 2);
    }
    panic!("no server_name extension")
}

/// An SSLv2-framed ClientHello (the old compatible format): not TLS records.
pub fn sslv2_hello() -> Vec<u8> {
    let ciphers: [u8; 9] = [0x00, 0x00, 0x04, 0x01, 0x00, 0x80, 0x07, 0x00, 0xc0];
    let challenge = [0x5au8; 16];
    let mut body = vec![0x01, 0x03, 0x01]; // CLIENT-HELLO, version 3.1
    body.extend_from_slice(&(ciphers.len() as u16).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // session id length
    body.extend_from_slice(&(challenge.len() as u16).to_be_bytes());
    body.extend_from_slice(&ciphers);
    body.extend_from_slice(&challenge);
    let mut out = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// `n` pseudo-random bytes (fixed seed, so a failure reproduces). The first
/// byte is kept off 0x16: random bytes that happen to start like a handshake
/// record are a legitimate "need more" and would end as a timeout.
pub fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if out.first() == Some(&0x16) {
        out[0] = 0x17;
    }
    out
}

// ---------------------------------------------------------------------------
// Bulk data

/// A deterministic byte stream: a pseudo-random block of prime length
/// repeated, so a lost, duplicated or reordered chunk shows up at once and
/// checking is a memcmp (fast even in debug builds).
#[derive(Clone)]
pub struct Pattern {
    block: Arc<Vec<u8>>,
}

/// Prime, so no read or write size lines up with the repetition.
const PATTERN_BLOCK: usize = 1_000_003;

impl Pattern {
    /// A pattern; different seeds give unrelated streams.
    pub fn new(seed: u64) -> Pattern {
        let mut x = seed | 1;
        let block = (0..PATTERN_BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        Pattern {
            block: Arc::new(block),
        }
    }

    /// The bytes at stream offset `offset`, `len` of them at most, without copying.
    pub fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let at = (offset % PATTERN_BLOCK as u64) as usize;
        &self.block[at..(at + len).min(PATTERN_BLOCK)]
    }

    /// Whether `got` equals the stream at `offset`.
    pub fn matches(&self, mut offset: u64, mut got: &[u8]) -> bool {
        while !got.is_empty() {
            let want = self.slice(offset, got.len());
            if &got[..want.len()] != want {
                return false;
            }
            offset += want.len() as u64;
            got = &got[want.len()..];
        }
        true
    }

    /// Writes `len` bytes of the stream from offset 0.
    pub async fn write<W: AsyncWriteExt + Unpin>(&self, w: &mut W, len: u64) -> io::Result<()> {
        self.write_range(w, 0, len).await
    }

    /// Writes the stream's bytes `from..to`.
    pub async fn write_range<W: AsyncWriteExt + Unpin>(
        &self,
        w: &mut W,
        from: u64,
        to: u64,
    ) -> io::Result<()> {
        let mut at = from;
        while at < to {
            let chunk = self.slice(at, (to - at).min(256 * 1024) as usize);
            w.write_all(chunk).await?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Reads exactly `len` bytes and checks them against the stream from
    /// offset 0; panics on a mismatch or early EOF.
    pub async fn expect<R: AsyncReadExt + Unpin>(&self, r: &mut R, len: u64) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < len {
            let want = (len - at).min(buf.len() as u64) as usize;
            let n = r.read(&mut buf[..want]).await.unwrap();
            assert!(n > 0, "EOF after {at} of {len} bytes");
            assert!(self.matches(at, &buf[..n]), "data differs near offset {at}");
            at += n as u64;
        }
    }
}

/// Reads and asserts EOF (no extra byte), bounded.
pub async fn expect_eof<R: AsyncReadExt + Unpin>(r: &mut R) {
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, r.read(&mut b))
        .await
        .expect("no EOF in time")
        .unwrap();
    assert_eq!(n, 0, "extra byte after the expected data");
}

// ---------------------------------------------------------------------------
// The real binary

/// Waits (bounded) for a `sniroute run` child to say where it listens (the
/// "listening on [ADDR]" line on stderr). Everything the child writes to
/// stderr keeps being collected in the returned buffer, so it never blocks on
/// a full pipe and a failing test can show it.
pub fn learn_listen_addr(
    child: &mut std::process::Child,
) -> (SocketAddr, Arc<std::sync::Mutex<String>>) {
    use std::io::BufRead;
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let pipe = child.stderr.take().expect("stderr must be piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line
                .find("listening on")
                .and_then(|at| first_addr(&line[at..]))
            {
                let _ = tx.send(addr);
            }
            let mut seen = seen.lock().unwrap();
            seen.push_str(&line);
            seen.push('\n');
        }
    });
    match rx.recv_timeout(WAIT) {
        Ok(addr) => (addr, stderr),
        Err(_) => panic!(
            "sniroute never said where it listens; stderr:\n{}",
            stderr.lock().unwrap()
        ),
    }
}

/// The first `127.0.0.1:PORT` in `s`.
pub fn first_addr(s: &str) -> Option<SocketAddr> {
    let at = s.find("127.0.0.1:")?;
    let rest = &s[at..];
    let end = rest[10..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(rest.len(), |e| e + 10);
    rest[..end].parse().ok()
}
