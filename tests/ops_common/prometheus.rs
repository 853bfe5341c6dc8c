//! A real Prometheus server scraping the daemon under test every second, and
//! PromQL evaluated through its HTTP API (`/api/v1/query`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::daemon::{free_addr, http_get, url_encode};
use super::{WAIT, wait_until};

/// A running `prometheus`; stopped on drop.
pub struct Prometheus {
    child: Child,
    pub web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` with a temp TSDB, scraping `target` every second, and
    /// waits until it is ready to answer queries.
    pub fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        Prometheus::start_with_rules(binary, target, &[])
    }

    /// Like [`Prometheus::start`], also evaluating the rule files
    /// `rule_files` every second.
    pub fn start_with_rules(binary: &Path, target: SocketAddr, rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("\"{}\"", p.display()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [{}]\n\
                 scrape_configs:\n  - job_name: sniroute\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let web = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Prometheus {
            child,
            web,
            _dir: dir,
        };
        let log = prometheus._dir.path().join("prometheus.log");
        wait_until("prometheus to be ready", WAIT, || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            http_get(web, "/-/ready")
                .ok()
                .filter(|(status, _)| status.contains(" 200 "))
        });
        prometheus
    }

    /// Evaluates `expr` now; `Err` carries Prometheus's error text.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(
            self.web,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )
        .map_err(|e| e.to_string())?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}"))?;
        if json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The largest sample value of a vector result (NaN counts as none).
    pub fn max_value(result: &[Value]) -> Option<f64> {
        result
            .iter()
            .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|v| !v.is_nan())
            .reduce(f64::max)
    }

    /// Waits until `expr` evaluates to at least `want`.
    pub fn wait_at_least(&self, expr: &str, want: f64) -> f64 {
        wait_until(&format!("prometheus: {expr} >= {want}"), WAIT, || {
            let result = self.query(expr).ok()?;
            Prometheus::max_value(&result).filter(|&v| v >= want)
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
