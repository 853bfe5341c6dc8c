//! Harness for the kernel-ban tests (`tests/firewall.rs`): each test runs in
//! a network namespace of its own, so the real `nft` changes a ruleset that
//! only the test sees, never the host's. The test re-executes its own test
//! binary under `unshare -n` (filtered to that one test), brings `lo` up
//! there, and runs the body: the daemon and every client are inside.
//!
//! Without the means to make a namespace (not root, no `unshare`, no `nft`)
//! a test says SKIPPED and passes, except under `CI=true`, where it fails:
//! CI is root and installs nftables, so a skip there would hide a bug.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

/// Set in the child process to the name of the test it runs in the namespace.
const INSIDE: &str = "SNIROUTE_TEST_NETNS";

/// Upper bound for anything a test waits for: generous for a loaded 2-core
/// CI machine; every wait normally ends within a fraction of a second.
pub const WAIT: Duration = Duration::from_secs(15);

/// Polling period of [`wait_until`]: short against the events awaited.
const POLL: Duration = Duration::from_millis(20);

/// How long a connect to a dropped SYN is given before it counts as timed
/// out: Linux retransmits a SYN after 1 s, so 2 s sees at least one retry
/// dropped too, while an accepted connect takes microseconds.
pub const DROPPED_CONNECT: Duration = Duration::from_secs(2);

/// Longest a test read may block: the daemon answers or closes in milliseconds.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `body` inside a fresh network namespace (see the module doc).
/// `name` must be the test function's name.
pub fn in_netns(name: &str, body: impl FnOnce()) {
    if std::env::var(INSIDE).as_deref() == Ok(name) {
        run("ip", &["link", "set", "lo", "up"]);
        body();
        return;
    }
    if let Err(why) = can_make_netns() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name}: cannot run the kernel-ban test: {why}");
        }
        eprintln!("SKIPPED {name}: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let output = Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, name)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in its network namespace: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

/// Why a namespace with nftables cannot be made here, if it cannot.
fn can_make_netns() -> Result<(), String> {
    let probe = Command::new("unshare")
        .args(["-n", "nft", "list", "ruleset"])
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if probe.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`unshare -n nft list ruleset` failed (needs root and the nftables package): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ))
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `probe` until it returns `Some`, for at most `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// nft

/// One element of a set as `nft -j` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    /// `127.0.0.2`, `2001:db8:1:1::`, `10.0.0.0/8`.
    pub value: String,
    /// Seconds the kernel keeps it from now.
    pub expires: u64,
    /// Unix seconds when the element expires: read time + `expires`, so a
    /// test can compare it with a ban's `expires_at` however slow it is.
    pub expires_at: u64,
}

/// The elements of set `set` of table `inet table`; `None` when the table
/// (or set) does not exist.
pub fn set_elements(table: &str, set: &str) -> Option<Vec<Element>> {
    let output = Command::new("nft")
        .args(["-j", "list", "set", "inet", table, set])
        .output()
        .expect("run nft");
    if !output.status.success() {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("nft json");
    let set = doc["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .find_map(|item| item.get("set"))
        .expect("a set");
    let Some(elems) = set.get("elem").and_then(|e| e.as_array()) else {
        return Some(Vec::new());
    };
    Some(elems.iter().map(element).collect())
}

fn element(item: &serde_json::Value) -> Element {
    let elem = &item["elem"];
    let value = match &elem["val"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => {
            let prefix = &o["prefix"];
            format!("{}/{}", prefix["addr"].as_str().unwrap(), prefix["len"])
        }
        other => panic!("unexpected element {other}"),
    };
    let expires = elem["expires"].as_u64().unwrap_or(0);
    Element {
        value,
        expires,
        expires_at: now() + expires,
    }
}

/// Every element of every set of the table, as text values.
pub fn all_elements(table: &str) -> Vec<String> {
    ["ban4", "ban6", "net4", "net6"]
        .iter()
        .flat_map(|set| set_elements(table, set).unwrap_or_default())
        .map(|e| e.value)
        .collect()
}

/// True when table `inet table` exists.
pub fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run nft")
        .success()
}

/// Waits until `value` is an element of `set` and returns it.
pub fn wait_element(table: &str, set: &str, value: &str) -> Element {
    wait_until(&format!("{value} in set {set}"), WAIT, || {
        set_elements(table, set)?
            .into_iter()
            .find(|e| e.value == value)
    })
}

/// Waits until `value` is no element of `set`.
pub fn wait_no_element(table: &str, set: &str, value: &str) {
    wait_until(&format!("{value} gone from set {set}"), WAIT, || {
        let elements = set_elements(table, set).unwrap_or_default();
        (!elements.iter().any(|e| e.value == value)).then_some(())
    });
}

// ---------------------------------------------------------------------------
// The daemon

/// A loopback port nobody listens on in this namespace right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A running `sniroute run` in the test's namespace; killed on drop.
pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub metrics: SocketAddr,
    stderr: PathBuf,
}

impl Daemon {
    /// Writes `config` (the whole file) into `dir` and starts the daemon
    /// with it; returns at once.
    pub fn spawn(dir: &Path, config: &str) -> Daemon {
        Daemon::spawn_as(dir, config, &[])
    }

    /// [`Daemon::spawn`] under `wrapper` (e.g. `setpriv ...`).
    pub fn spawn_as(dir: &Path, config: &str, wrapper: &[&str]) -> Daemon {
        let path = dir.join("sniroute.toml");
        std::fs::write(&path, config).expect("write config");
        let stderr = dir.join("stderr.log");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env("SNIROUTE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sniroute");
        let metrics = metrics_addr(config).expect("config has [metrics] listen");
        Daemon {
            child,
            dir: dir.to_path_buf(),
            config: path,
            metrics,
            stderr,
        }
    }

    /// Starts the daemon and waits until it serves (its metrics endpoint
    /// answers only after the firewall table is loaded and listeners are up).
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let mut daemon = Daemon::spawn(dir, config);
        wait_until("sniroute to serve metrics", WAIT, || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("sniroute exited ({status}):\n{}", daemon.stderr());
            }
            daemon.try_scrape()
        });
        daemon
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) for the daemon to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_until("sniroute to exit", WAIT, || {
            child.try_wait().expect("try_wait")
        })
    }

    /// SIGTERM, then waits for the exit; a clean stop must exit 0.
    pub fn stop(mut self) {
        self.signal("-TERM");
        let status = self.wait_exit();
        assert!(
            status.success(),
            "sniroute exit {status}:\n{}",
            self.stderr()
        );
    }

    /// SIGKILL: a crash, leaving whatever it had made behind.
    pub fn crash(mut self) {
        self.signal("-KILL");
        self.wait_exit();
    }

    fn signal(&self, signal: &str) {
        run("kill", &[signal, &self.child.id().to_string()]);
    }

    /// `sniroute ARGS -c CONFIG` (an admin command); returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("run sniroute")
    }

    /// An admin command that must succeed; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "sniroute {args:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The `expires_at` of the ban on `net` (`bans list --json`).
    pub fn ban_expiry(&self, net: &str) -> Option<u64> {
        let listing: serde_json::Value =
            serde_json::from_str(&self.admin(&["bans", "list", "--json"])).expect("json");
        listing["bans"]
            .as_array()?
            .iter()
            .find(|b| b["net"] == net)
            .and_then(|b| b["expires_at"].as_u64())
    }

    fn try_scrape(&self) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.metrics, IO_TIMEOUT).ok()?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.contains(" 200 ").then_some(text)
    }

    /// The value of one series in a scrape (`sniroute_firewall_elements`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.try_scrape()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn metrics_addr(config: &str) -> Option<SocketAddr> {
    let after = config.split("[metrics]").nth(1)?;
    let line = after
        .lines()
        .find(|l| l.trim_start().starts_with("listen"))?;
    line.split('"').nth(1)?.parse().ok()
}

/// A config: `listen` addresses, one route `fixture.example` to `backend`,
/// bans after one strike for `ban_time`, `ignore` (never empty: the test's
/// own address 127.0.0.1 is always in), the state file in `dir`, the admin
/// socket and metrics, and `[firewall]` with `firewall` as its body.
pub fn config(
    dir: &Path,
    listen: &[SocketAddr],
    backend: SocketAddr,
    ignore: &[&str],
    firewall: &str,
) -> String {
    let listen: Vec<String> = listen.iter().map(|a| format!("\"{a}\"")).collect();
    let mut ignore: Vec<String> = ignore.iter().map(|a| format!("\"{a}\"")).collect();
    ignore.push("\"127.0.0.1\"".into());
    let mut text = String::new();
    writeln!(text, "listen = [{}]\nworkers = 1\n", listen.join(", ")).unwrap();
    writeln!(
        text,
        "[[route]]\nsni = [\"fixture.example\"]\nbackend = \"{backend}\"\n"
    )
    .unwrap();
    writeln!(
        text,
        "[ban]\nmax_retry = 1\nban_time = \"1h\"\nignore = [{}]\nstate_file = \"{}\"\n",
        ignore.join(", "),
        dir.join("bans.json").display()
    )
    .unwrap();
    writeln!(
        text,
        "[rate_limit]\nper_ip = 0\n\n[admin]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\n[log]\naccess = \"off\"\n\n[firewall]\n{firewall}",
        dir.join("admin.sock").display(),
        free_port()
    )
    .unwrap();
    text
}

// ---------------------------------------------------------------------------
// Traffic

/// The server name in every SNI fixture; the routed name in these tests.
pub const ROUTED: &str = "fixture.example";
/// A name no route has, as long as [`ROUTED`] so the fixture's lengths hold.
pub const UNKNOWN: &str = "unknown.example";

/// A real ClientHello (openssl s_client) asking for `name` (15 bytes).
pub fn hello(name: &str) -> Vec<u8> {
    assert_eq!(name.len(), ROUTED.len());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clienthello/openssl.bin");
    let mut bytes = std::fs::read(path).expect("fixture");
    let at = bytes
        .windows(ROUTED.len())
        .position(|w| w == ROUTED.as_bytes())
        .expect("fixture names fixture.example");
    bytes[at..at + name.len()].copy_from_slice(name.as_bytes());
    bytes
}

/// Connects from `from` to `to`, giving up after `limit`.
pub fn connect_from(from: IpAddr, to: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    socket.connect_timeout(&SockAddr::from(to), limit)?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Asserts that a connect from `from` gets no answer at all: the kernel
/// dropped the SYN.
pub fn assert_dropped(from: IpAddr, to: SocketAddr) {
    match connect_from(from, to, DROPPED_CONNECT) {
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => panic!("connect from {from} to {to}: {e} (expected a timeout)"),
        Ok(_) => panic!("connect from {from} to {to} was accepted; its SYN should be dropped"),
    }
}

/// Sends an unknown name from `from`: the daemon closes without a byte and
/// bans the source.
pub fn send_unknown(from: IpAddr, to: SocketAddr) {
    let mut stream = connect_from(from, to, IO_TIMEOUT).expect("connect");
    let _ = stream.write_all(&hello(UNKNOWN));
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("unknown name from {from}: {other:?}"),
    }
}

/// A routed round trip from `from`: true when the echo backend answered
/// with its greeting and echoed the hello.
pub fn routes(from: IpAddr, to: SocketAddr) -> bool {
    let Ok(mut stream) = connect_from(from, to, IO_TIMEOUT) else {
        return false;
    };
    let hello = hello(ROUTED);
    if stream.write_all(&hello).is_err() {
        return false;
    }
    let mut echoed = vec![0u8; hello.len() + 1];
    if stream.read_exact(&mut echoed).is_err() {
        return false;
    }
    let _ = stream.shutdown(Shutdown::Write);
    echoed[0] == b'!' && echoed[1..] == hello[..]
}

/// A TCP backend that greets with `!` and echoes, on its own threads.
pub fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                if stream.write_all(b"!").is_err() {
                    return;
                }
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `127.0.0.N`.
pub fn lo4(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// Adds `addr` (IPv6, /128) to `lo`, usable at once (no duplicate detection).
pub fn add_v6(addr: &str) -> IpAddr {
    run(
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "lo",
            "nodad",
        ],
    );
    addr.parse().expect("IPv6 address")
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
