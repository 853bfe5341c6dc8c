//! The `sniroute` binary, black-box: `check` exit codes and messages, `--help`,
//! `run` serving a real TLS client and exiting 0 on SIGTERM, and (when the
//! binaries exist) curl with mTLS through it and `openssl s_client` refused
//! without a byte.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

fn sniroute(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_example_config() {
    let out = sniroute(&["check", "config/sniroute.toml"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("config/sniroute.toml"), "{stdout}");
    assert!(
        stdout.lines().count() >= 2,
        "no summary after the verdict:\n{stdout}"
    );
}

#[test]
fn check_reports_every_error_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:443\"]\n\
         bogus = 1\n\
         \n\
         [limits]\n\
         connect_timeout = \"soon\"\n\
         \n\
         [[route]]\n\
         sni = [\"app.test\"]\n\
         backend = \"127.0.0.1:8443\"\n",
    )
    .unwrap();
    let path_arg = path.display().to_string();
    let out = sniroute(&["check", &path_arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&path_arg))
        .collect();
    for line in &lines {
        let rest = &line[path_arg.len()..];
        let mut parts = rest.splitn(4, ':');
        assert_eq!(parts.next(), Some(""), "{line}");
        let line_no: usize = parts.next().unwrap().parse().unwrap();
        let col: usize = parts.next().unwrap().parse().unwrap();
        assert!(line_no >= 1 && col >= 1, "{line}");
        assert!(parts.next().unwrap().starts_with(' '), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path_arg}:2:1:"))),
        "no error at the unknown key (2:1):\n{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{path_arg}:5:"))),
        "no error at the bad duration (line 5):\n{stderr}"
    );
}

#[test]
fn check_of_a_missing_file_exits_2() {
    let out = sniroute(&["check", "/nonexistent/sniroute.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/nonexistent/sniroute.toml"));
}

#[test]
fn help_works() {
    for args in [&["--help"][..], &["run", "--help"], &["check", "--help"]] {
        let out = sniroute(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
}

// ---------------------------------------------------------------------------
// The daemon

/// A `sniroute run` child process, killed on drop if still running.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `sniroute run -c` on a config listening on 127.0.0.1:0 and learns
/// its port from the start-up line on stderr ("listening on [ADDR]").
fn spawn_daemon(routes: &str) -> Daemon {
    spawn_daemon_with_grace(routes, "5s")
}

/// Like [`spawn_daemon`] with `limits.shutdown_grace = grace`.
fn spawn_daemon_with_grace(routes: &str, grace: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let config = dir.path().join("sniroute.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = 1\n\n[limits]\nshutdown_grace = {grace:?}\n\n{routes}\n\
             [ban]\nenabled = false\nstate_file = \"\"\n\n[rate_limit]\nper_ip = 0\n\n\
             [metrics]\nlisten = \"\"\n\n[admin]\nsocket = \"\"\n\n\
             [log]\naccess = {:?}\nformat = \"json\"\n",
            log_path.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .env("SNIROUTE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, _stderr) = learn_listen_addr(&mut child);
    Daemon {
        child,
        addr,
        log_path,
        _dir: dir,
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "sniroute did not exit in {within:?}"
        );
        std::thread::sleep(POLL);
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The access-log line for `client`, waited for with a bound.
fn wait_log_line(log: &Path, client: SocketAddr) -> serde_json::Value {
    let want = client.to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["client"].as_str() == Some(want.as_str()))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no log line for {want}:\n{text}");
        std::thread::sleep(POLL);
    }
}

fn route(sni: &str, backend: SocketAddr) -> String {
    format!("[[route]]\nsni = [{sni:?}]\nbackend = \"{backend}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_a_tls_client_and_exits_0_on_sigterm() {
    let backend = spawn_tls_backend(true).await;
    let mut daemon = tokio::task::spawn_blocking(move || spawn_daemon(&route("app.test", backend)))
        .await
        .unwrap();

    let mut tls = tls_connect(daemon.addr, "app.test", true).await.unwrap();
    let local = tls.get_ref().0.local_addr().unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        pki().server_der
    );
    let mut greeting = vec![0u8; GREETING.len()];
    tls.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, GREETING);
    tls.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    tls.shutdown().await.unwrap();
    read_all(&mut tls).await;

    let log = daemon.log_path.clone();
    let line = tokio::task::spawn_blocking(move || wait_log_line(&log, local))
        .await
        .unwrap();
    assert_eq!(line["outcome"], "routed", "{line}");

    sigterm(&daemon.child);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut daemon.child, WAIT))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_and_a_second_one_cuts_the_grace_short() {
    let backend = spawn_tls_backend(true).await;
    let mut daemon = tokio::task::spawn_blocking(move || {
        spawn_daemon_with_grace(&route("app.test", backend), "300s")
    })
    .await
    .unwrap();
    let mut tls = tls_connect(daemon.addr, "app.test", true).await.unwrap();
    let mut greeting = vec![0u8; GREETING.len()];
    tls.read_exact(&mut greeting).await.unwrap();

    // First SIGTERM: no new connections, the open one keeps flowing.
    sigterm(&daemon.child);
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(daemon.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(POLL).await;
    }
    tls.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "exited mid-drain"
    );

    // Second SIGTERM: exits now, well before the 300 s grace.
    sigterm(&daemon.child);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut daemon.child, WAIT))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(read_all(&mut tls).await.is_empty());
}

fn have(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || Command::new(binary)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate_gets_the_backends_answer() {
    if !have("curl") {
        eprintln!("NOTE: skipped: no curl binary on this host");
        return;
    }
    let backend = spawn_https_backend().await;
    let daemon = tokio::task::spawn_blocking(move || spawn_daemon(&route("app.test", backend)))
        .await
        .unwrap();
    let pem_dir = tempfile::tempdir().unwrap();
    pki().write_to(pem_dir.path());
    let port = daemon.addr.port();
    let dir = pem_dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("app.test:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client.key"))
            .arg(format!("https://app.test:{port}/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), HTTP_BODY);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_an_unknown_name_reads_nothing() {
    if !have("openssl") {
        eprintln!("NOTE: skipped: no openssl binary on this host");
        return;
    }
    let backend = spawn_tls_backend(false).await;
    let daemon = tokio::task::spawn_blocking(move || spawn_daemon(&route("app.test", backend)))
        .await
        .unwrap();
    let target = daemon.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-connect", &target, "-servername", "nope.test"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("has read 0 bytes"),
        "s_client read something:\n{all}"
    );
    assert!(all.contains("no peer certificate available"), "{all}");
    drop(daemon);
}
