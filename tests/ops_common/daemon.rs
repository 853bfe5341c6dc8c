//! The real `sniroute` binary under test: a config written to a temp dir, the
//! child process with its stderr kept for failure messages, signals, and its
//! `/metrics` endpoint read over plain HTTP.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use super::{WAIT, wait_until};

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_sniroute");

/// A loopback address with a port nobody listens on right now: bound with
/// port 0 and released, so the daemon can bind it (fine for black-box tests of
/// a binary that takes addresses from its config).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// What the tests vary in a config; the rest is fixed: bans after one strike
/// (the seed's `maxretry = 1`), 127.0.0.1 ignored so the test's own probes
/// and streams are never struck, bans in memory, no admin socket.
#[derive(Clone)]
pub struct Conf {
    pub listen: Vec<SocketAddr>,
    pub metrics: SocketAddr,
    /// `(name, backend)`: one `[[route]]` each, `sni = [name]`.
    pub routes: Vec<(String, SocketAddr)>,
    /// `log.access` file (text format); `None` = `"off"`.
    pub access_log: Option<PathBuf>,
    /// Replaces the fixed sections after `[limits]` (`[ban]`, `[metrics]`,
    /// `[admin]`, `[log]`) when set; the text must then say `[metrics]
    /// listen` itself (see [`Conf::metrics`]).
    pub tail: Option<String>,
}

impl Conf {
    /// One listener and a metrics endpoint on free ports, no routes yet.
    pub fn new() -> Conf {
        Conf {
            listen: vec![free_addr()],
            metrics: free_addr(),
            routes: Vec::new(),
            access_log: None,
            tail: None,
        }
    }

    /// Adds a route `name -> backend`.
    pub fn route(mut self, name: &str, backend: SocketAddr) -> Conf {
        self.routes.push((name.to_owned(), backend));
        self
    }

    /// The config file text.
    pub fn toml(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| format!("\"{a}\"")).collect();
        let mut text = format!("listen = [{}]\nworkers = 2\n", listen.join(", "));
        for (name, backend) in &self.routes {
            writeln!(
                text,
                "\n[[route]]\nsni = [\"{name}\"]\nbackend = \"{backend}\""
            )
            .unwrap();
        }
        let access = match &self.access_log {
            Some(path) => path.display().to_string(),
            None => "off".to_owned(),
        };
        text.push_str("\n[limits]\nclient_hello_timeout = \"2s\"\nshutdown_grace = \"5s\"\n");
        if let Some(tail) = &self.tail {
            text.push_str(tail);
            return text;
        }
        write!(
            text,
            "\n[ban]\nmax_retry = 1\nignore = [\"127.0.0.1\"]\nstate_file = \"\"\n\
             \n[metrics]\nlisten = \"{}\"\n\
             \n[admin]\nsocket = \"\"\n\
             \n[log]\naccess = \"{access}\"\nformat = \"text\"\n",
            self.metrics
        )
        .unwrap();
        text
    }
}

/// A running `sniroute run`; killed on drop if the test did not stop it.
pub struct Daemon {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub conf: Conf,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts `sniroute run -c CONFIG` and waits until it serves metrics
    /// (which it does only after its listeners are up).
    pub fn start(conf: &Conf) -> Daemon {
        let mut daemon = Daemon::spawn(conf, &[], &[]);
        daemon.wait_serving();
        daemon
    }

    /// Starts `WRAPPER... sniroute run -c CONFIG` with extra environment, and
    /// returns at once.
    pub fn spawn(conf: &Conf, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_with(conf, wrapper, env, false)
    }

    /// Starts `sniroute run` the way systemd does with its output to the
    /// journal: stdout and stderr go to one file, and `JOURNAL_STREAM` is
    /// its `DEVICE:INODE`. Waits until it serves.
    #[allow(dead_code)] // tests/operator.rs, not tests/ops.rs
    pub fn start_journal(conf: &Conf) -> Daemon {
        let mut daemon = Daemon::spawn_with(conf, &[], &[], true);
        daemon.wait_serving();
        daemon
    }

    fn spawn_with(conf: &Conf, wrapper: &[&str], env: &[(&str, &str)], journal: bool) -> Daemon {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("sniroute.toml");
        std::fs::write(&config_path, conf.toml()).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let meta = stderr.metadata().expect("stderr file metadata");
        let journal_stream = format!("{}:{}", meta.dev(), meta.ino());
        let same_stream = stderr.try_clone().expect("dup stderr file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env("SNIROUTE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if journal {
            // systemd connects stdout and stderr to the same journal stream.
            command
                .env("JOURNAL_STREAM", journal_stream)
                .stdout(same_stream);
        }
        let child = command.spawn().expect("spawn sniroute");
        Daemon {
            child,
            dir,
            config_path,
            conf: conf.clone(),
            stderr_path,
        }
    }

    /// What the daemon wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's process id.
    #[allow(dead_code)] // tests/operator.rs, not tests/ops.rs
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the daemon's stderr if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("sniroute exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    /// Waits until `/metrics` answers; panics with stderr if the daemon exits.
    pub fn wait_serving(&mut self) {
        let metrics = self.conf.metrics;
        let served = wait_until(
            &format!("sniroute to serve metrics on {metrics}"),
            WAIT,
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(Err(status));
                }
                http_get(metrics, "/metrics").ok().map(Ok)
            },
        );
        if let Err(status) = served {
            panic!("sniroute exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_child(&self.child);
        kill_process(pid, signal).expect("kill");
    }

    /// Replaces the config file (write aside, then rename: a reader never
    /// sees half a file).
    pub fn write_config(&self, text: &str) {
        let aside = self.dir.path().join("sniroute.toml.new");
        std::fs::write(&aside, text).expect("write config");
        std::fs::rename(&aside, &self.config_path).expect("rename config");
    }

    /// One scrape of `/metrics`.
    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.conf.metrics, "/metrics").expect("scrape /metrics");
        assert!(status.contains(" 200 "), "GET /metrics: {status}");
        body
    }

    /// The value of one series, written exactly as in the scrape
    /// (e.g. `sniroute_config_reloads_total{result="ok"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.scrape(), series)
    }

    /// Waits until `series` is at least `want`.
    pub fn wait_metric_at_least(&self, series: &str, want: f64) -> f64 {
        wait_until(&format!("{series} >= {want}"), WAIT, || {
            self.metric(series).filter(|&v| v >= want)
        })
    }

    /// SIGTERM, waits (bounded) for the exit, and returns the exit status
    /// with everything the daemon wrote to stderr.
    #[allow(dead_code)] // tests/operator.rs, not tests/ops.rs
    pub fn stop_with_stderr(mut self) -> (ExitStatus, String) {
        self.signal(Signal::TERM);
        let child = &mut self.child;
        let status = wait_until("sniroute to exit after SIGTERM", WAIT, || {
            child.try_wait().expect("try_wait")
        });
        // The temp dir lives as long as `self`: read before it is dropped.
        (status, self.stderr())
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(self) -> ExitStatus {
        self.stop_by(Signal::TERM)
    }

    /// Sends `signal`, then waits (bounded) for the exit status.
    pub fn stop_by(mut self, signal: Signal) -> ExitStatus {
        self.signal(signal);
        let child = &mut self.child;
        wait_until(&format!("sniroute to exit after {signal:?}"), WAIT, || {
            child.try_wait().expect("try_wait")
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

/// The value of `series` in a Prometheus text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Longest a test HTTP exchange may take: both servers answer locally in
/// milliseconds.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A plain HTTP/1.0 GET (the server closes after the response, so no
/// chunking or keep-alive to handle). Returns the status line and the body.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {response:?}")))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query-string value (PromQL is full of `{}"[]()` and spaces).
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
