//! A real CrowdSec Local API for the tests: Debian's `crowdsec` run as LAPI
//! only (`crowdsec -c CONFIG -no-cs -no-capi`), with its own config, SQLite
//! database and loopback port in a temp dir, so the package's own service
//! (if any) and its files are never touched. Machines, bouncers and
//! decisions are added with `cscli -c CONFIG`. Killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ops_common::daemon::free_addr;
use crate::ops_common::{WAIT, wait_until};

/// The crowdsec binary of Debian's package.
pub const CROWDSEC: &str = "/usr/bin/crowdsec";
/// Its command-line client.
pub const CSCLI: &str = "/usr/bin/cscli";

/// A running LAPI (or a stopped one that keeps its database to restart).
pub struct Lapi {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    pub addr: SocketAddr,
}

impl Lapi {
    /// Writes the config for a LAPI on a free loopback port and starts it.
    pub fn start() -> Lapi {
        let mut lapi = Lapi::configure();
        lapi.run();
        lapi
    }

    /// A LAPI serving https with `tls`'s server certificate; client
    /// certificates from its CA with OU [`CLIENT_OU`] are taken as bouncers
    /// and machines (CrowdSec's TLS auth).
    pub fn start_tls(tls: &TlsFiles) -> Lapi {
        let mut lapi = Lapi::configure_with(Some(tls));
        lapi.run();
        lapi
    }

    /// Writes the config (and the `cscli` machine) without starting the LAPI.
    pub fn configure() -> Lapi {
        Lapi::configure_with(None)
    }

    fn configure_with(tls: Option<&TlsFiles>) -> Lapi {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let d = dir.path();
        for sub in ["data", "hub", "notifications"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        std::fs::write(d.join("simulation.yaml"), "simulation: off\n").expect("simulation");
        std::fs::write(
            d.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n\
             decisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles");
        let p = d.display();
        let config = d.join("config.yaml");
        let tls = tls.map_or(String::new(), |t| {
            format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n      ca_cert_path: {}\n\
                 \x20     bouncers_allowed_ou: [{CLIENT_OU}]\n      agents_allowed_ou: [{CLIENT_OU}]\n",
                t.server_cert.display(),
                t.server_key.display(),
                t.ca.display()
            )
        });
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
                 config_paths:\n  config_dir: {p}/\n  data_dir: {p}/data/\n  simulation_path: {p}/simulation.yaml\n\
                 \x20 hub_dir: {p}/hub/\n  index_path: {p}/hub/.index.json\n  notification_dir: {p}/notifications/\n\
                 \x20 plugin_dir: /usr/lib/crowdsec/plugins/\n\
                 crowdsec_service:\n  acquisition_path: {p}/acquis.yaml\n\
                 cscli:\n  output: human\n\
                 db_config:\n  log_level: info\n  type: sqlite\n  db_path: {p}/data/crowdsec.db\n  use_wal: true\n\
                 \x20 flush:\n    max_items: 500000\n    max_age: 7d\n\
                 api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {p}/local_api_credentials.yaml\n\
                 \x20 server:\n    log_level: info\n    listen_uri: {addr}\n    profiles_path: {p}/profiles.yaml\n\
                 \x20   trusted_ips:\n      - 127.0.0.1\n{tls}\
                 prometheus:\n  enabled: false\n  level: full\n  listen_addr: 127.0.0.1\n  listen_port: {}\n",
                free_addr().port()
            ),
        )
        .expect("config");
        let lapi = Lapi {
            child: None,
            dir,
            config,
            addr,
        };
        let creds = lapi.dir.path().join("local_api_credentials.yaml");
        lapi.cscli(&[
            "machines",
            "add",
            "cscli",
            "--auto",
            "--force",
            "-f",
            &creds.display().to_string(),
        ]);
        lapi
    }

    /// Starts the LAPI (again) and waits until it accepts connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "LAPI already running");
        let log = std::fs::File::create(self.dir.path().join("lapi.log")).expect("log");
        let child = Command::new(CROWDSEC)
            .arg("-c")
            .arg(&self.config)
            .args(["-no-cs", "-no-capi"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn crowdsec");
        self.child = Some(child);
        let addr = self.addr;
        wait_until(&format!("the LAPI to listen on {addr}"), WAIT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("crowdsec exited ({status}):\n{}", self.log());
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
    }

    /// Kills the LAPI (the database stays for [`Lapi::run`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The LAPI's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
    }

    /// `https://ADDR` for `lapi_url` (a LAPI from [`Lapi::start_tls`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `http://ADDR` for `lapi_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `cscli -c CONFIG ARGS...`; panics with its output if it fails.
    pub fn cscli(&self, args: &[&str]) -> String {
        let out = Command::new(CSCLI)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cscli");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cscli {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// `cscli bouncers add NAME`: writes its key to `dir/NAME.key`.
    pub fn bouncer(&self, name: &str, dir: &Path) -> PathBuf {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        let path = dir.join(format!("{name}.key"));
        std::fs::write(&path, key.trim()).expect("key file");
        path
    }

    /// `cscli machines add NAME --password ...`: writes it to `dir/NAME.pass`.
    pub fn machine(&self, name: &str, dir: &Path) -> PathBuf {
        let password = format!("pw-{name}-0123456789abcdef");
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &password,
            "--force",
            "-f",
            "/dev/null",
        ]);
        let path = dir.join(format!("{name}.pass"));
        std::fs::write(&path, &password).expect("password file");
        path
    }

    /// Active ban decisions as `(scope, value, scenario)`, every origin.
    pub fn decisions(&self) -> Vec<(String, String, String)> {
        let text = self.cscli(&["decisions", "list", "-a", "-o", "json"]);
        let alerts: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or(serde_json::Value::Null);
        let mut out = Vec::new();
        for alert in alerts.as_array().into_iter().flatten() {
            for d in alert["decisions"].as_array().into_iter().flatten() {
                out.push((
                    d["scope"].as_str().unwrap_or("").to_owned(),
                    d["value"].as_str().unwrap_or("").to_owned(),
                    d["scenario"].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        out
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[crowdsec]`... tail of a sniroute config for these tests: bans after
/// one strike, only 127.0.0.1 ignored, a state file and an admin socket in
/// `dir`, metrics on `metrics`, pulls every second.
pub fn tail(dir: &Path, metrics: SocketAddr, crowdsec: &str) -> String {
    let d = dir.display();
    format!(
        "\n[ban]\nmax_retry = 1\nignore = [\"127.0.0.1\"]\nstate_file = \"{d}/bans.json\"\n\
         \n[rate_limit]\nper_ip = 0\n\
         \n[metrics]\nlisten = \"{metrics}\"\n\
         \n[admin]\nsocket = \"{d}/admin.sock\"\n\
         \n[log]\naccess = \"off\"\n\
         \n[crowdsec]\n{crowdsec}\n"
    )
}

/// True when Debian's crowdsec is installed; else says why the test skips.
pub fn available(test: &str) -> bool {
    crate::ops_common::needed_tool(test, CROWDSEC, "crowdsec").is_some()
        && crate::ops_common::needed_tool(test, CSCLI, "crowdsec").is_some()
}

/// The OU CrowdSec's TLS auth is told to take for bouncers and machines.
pub const CLIENT_OU: &str = "sniroute";

/// A private CA, the LAPI's server certificate (for 127.0.0.1) and a client
/// certificate (CN `sniroute-tls`, OU [`CLIENT_OU`]), as PEM files.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes them in `dir` with rcgen.
    pub fn make(dir: &Path) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.distinguished_name
            .push(DnType::CommonName, "sniroute test LAPI CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("key");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, cn: &str, ou: Option<&str>, eku| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(ou) = ou {
                params
                    .distinguished_name
                    .push(DnType::OrganizationalUnitName, ou);
            }
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "localhost",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            Vec::new(),
            "sniroute-tls",
            Some(CLIENT_OU),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, text) in [
            (&files.ca, ca_cert.pem()),
            (&files.server_cert, server.0),
            (&files.server_key, server.1),
            (&files.client_cert, client.0),
            (&files.client_key, client.1),
        ] {
            std::fs::write(path, text).expect("pem file");
        }
        files
    }
}
