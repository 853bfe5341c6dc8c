//! `[crowdsec]`: the CrowdSec Local API (LAPI) as a source of remote bans
//! (sniroute pulls decisions as a bouncer) and, with `push`, as the place
//! its own bans go (sniroute pushes alerts as a machine).
//!
//! The key and password files are read here, so `sniroute check` reports a
//! missing or empty one at its key, like `nginx -t` does for a certificate.
//! Their contents never appear in `Debug` output or messages. So are the
//! TLS files of an https LAPI with a private CA (`ca_cert_file`) and of
//! client-certificate auth (`cert_file`, `key_file`), as CrowdSec's own
//! bouncers take them (`ca_cert_path`, `cert_path`, `key_path`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use url::Url;

use super::check::Checker;
use super::raw::Text;

/// `update_frequency` default: what the official bouncers use.
const DEFAULT_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
/// `update_frequency` floor: a pull a second is already 86,400 requests a
/// day per gateway at the LAPI; faster only loads it.
const MIN_UPDATE_FREQUENCY: Duration = Duration::from_secs(1);
/// Longest accepted key, password, machine id or scenario: cscli's keys are
/// 32 characters and passwords 64; anything far longer is a wrong file.
const MAX_SECRET: usize = 4096;
/// Largest TLS file read (CA bundle, certificate chain, key): Debian's whole
/// system bundle is ~220 KiB; a file far beyond it is a wrong file.
const MAX_PEM: u64 = 1 << 20;

/// A secret read from a file: shown as `<secret>` in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// `[crowdsec]` when `lapi_url` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrowdsecConfig {
    /// `lapi_url` (default "" = off): `http://` or `https://` base URL of the
    /// LAPI; plain `http` only to a loopback host (the key and the JWT
    /// travel in every request).
    pub lapi_url: Url,
    /// `api_key_file` (default "/etc/sniroute/crowdsec.key"): the bouncer key
    /// (`cscli bouncers add NAME`), first line of the file. Not read with
    /// `cert_file`: the certificate is the bouncer's credential then.
    pub api_key_file: PathBuf,
    /// The key read from `api_key_file`; `None` with a client certificate.
    pub api_key: Option<Secret>,
    /// `ca_cert_file` (default "" = none): PEM CA certificates trusted for
    /// an https LAPI IN ADDITION to the system's roots, like the official
    /// bouncers' `ca_cert_path` (a private CA, or the LAPI's self-signed
    /// certificate). https only.
    pub ca_cert_file: Option<PathBuf>,
    /// The certificates read from `ca_cert_file`.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// `cert_file` + `key_file`: TLS client-certificate auth (CrowdSec's
    /// `api.server.tls` with `bouncers_allowed_ou`/`agents_allowed_ou`).
    pub client_cert: Option<ClientCert>,
    /// `update_frequency` (default "10s", >= 1s): time between two pulls.
    pub update_frequency: Duration,
    /// `push = true`: also report this gateway's own bans; `None` = pull only.
    pub push: Option<PushConfig>,
}

/// A client certificate for the LAPI (`cert_file`, `key_file`, both or neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// `cert_file` (default "" = none): PEM certificate (chain, leaf first).
    /// Its CN names the bouncer (and machine) at the LAPI (`CN@address`);
    /// its OU must be in the LAPI's `bouncers_allowed_ou` (and, with push,
    /// `agents_allowed_ou`). https only.
    pub cert_file: PathBuf,
    /// `key_file` (default "" = none): its PEM private key.
    pub key_file: PathBuf,
    /// The key and the chain, as one PEM text (what the TLS client takes).
    pub pem: Secret,
}

/// What `push = true` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// `machine_id` (required with push, unless `cert_file`):
    /// `cscli machines add NAME --password ...`. With a client
    /// certificate the LAPI names the machine `CN@address` itself.
    pub machine_id: Option<String>,
    /// `password_file` (default "/etc/sniroute/crowdsec.pass"): that
    /// machine's password. Not read with `cert_file`.
    pub password_file: PathBuf,
    /// The password read from `password_file`; `None` with a client certificate.
    pub password: Option<Secret>,
    /// `scenario` (default "sniroute/unknown-sni"): the scenario of pushed
    /// alerts and decisions; `bans remove` deletes decisions of this
    /// scenario only.
    pub scenario: String,
}

/// `[crowdsec]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrowdsec {
    /// Default "" (off).
    pub lapi_url: Option<Text>,
    /// Default "/etc/sniroute/crowdsec.key".
    pub api_key_file: Option<Text>,
    /// Default "10s".
    pub update_frequency: Option<Text>,
    /// Default false.
    pub push: Option<bool>,
    /// Required with push.
    pub machine_id: Option<Text>,
    /// Default "/etc/sniroute/crowdsec.pass".
    pub password_file: Option<Text>,
    /// Default "sniroute/unknown-sni".
    pub scenario: Option<Text>,
    /// Default "" (system roots only).
    pub ca_cert_file: Option<Text>,
    /// Default "" (no client certificate).
    pub cert_file: Option<Text>,
    /// Default "" (no client certificate).
    pub key_file: Option<Text>,
}

impl Checker<'_, '_> {
    /// `None` when `lapi_url` is unset or "". Every value is checked either
    /// way; the key and password files are read only when it is on.
    pub(super) fn crowdsec(&mut self, raw: &RawCrowdsec) -> Option<CrowdsecConfig> {
        let update_frequency = self.duration(
            "crowdsec.update_frequency",
            raw.update_frequency.as_ref(),
            DEFAULT_UPDATE_FREQUENCY,
            false,
        );
        if update_frequency < MIN_UPDATE_FREQUENCY
            && let Some(t) = &raw.update_frequency
        {
            self.err(
                t.span(),
                "crowdsec.update_frequency: at least 1s (the official bouncers use 10s)",
            );
        }
        let scenario = self.scenario(raw.scenario.as_ref());
        let machine_id = raw
            .machine_id
            .as_ref()
            .filter(|t| !t.get_ref().trim().is_empty())
            .and_then(|t| self.bounded("crowdsec.machine_id", t));
        let url_text = raw.lapi_url.as_ref().filter(|t| !t.get_ref().is_empty())?;
        let lapi_url = self.lapi_url(url_text);
        let https = lapi_url.as_ref().is_some_and(|u| u.scheme() == "https");
        let ca = set(raw.ca_cert_file.as_ref()).map(|t| (t, self.ca_file(t, https)));
        let client_cert = self.client_cert(raw, https);
        // With a client certificate (even a broken one) the key is not read.
        let by_cert = set(raw.cert_file.as_ref()).is_some() || set(raw.key_file.as_ref()).is_some();
        let api_key = match by_cert {
            true => (PathBuf::from(""), Some(None)),
            false => {
                let (file, key) = self.secret_file(
                    "crowdsec.api_key_file",
                    raw.api_key_file.as_ref(),
                    "/etc/sniroute/crowdsec.key",
                    "cscli bouncers add NAME",
                );
                (file, key.map(Some))
            }
        };
        let push = match raw.push {
            Some(true) => self.push(raw, machine_id, scenario, by_cert),
            _ => None,
        };
        let (ca_cert_file, ca_certs) = match ca {
            Some((t, certs)) => (Some(PathBuf::from(t.get_ref())), certs?),
            None => (None, Vec::new()),
        };
        Some(CrowdsecConfig {
            lapi_url: lapi_url?,
            api_key_file: api_key.0,
            api_key: api_key.1?,
            ca_cert_file,
            ca_certs,
            client_cert: client_cert?,
            update_frequency,
            push,
        })
    }

    /// `ca_cert_file`: at least one PEM certificate; https only.
    fn ca_file(&mut self, raw: &Text, https: bool) -> Option<Vec<CertificateDer<'static>>> {
        if !https {
            self.err(
                raw.span(),
                "crowdsec.ca_cert_file: only for an https:// lapi_url",
            );
            return None;
        }
        let certs = read_pem(raw.get_ref(), certificates);
        self.pem_result("crowdsec.ca_cert_file", raw, certs)
    }

    /// `cert_file` + `key_file`: `Some(None)` when neither is set, `None`
    /// after an error.
    fn client_cert(&mut self, raw: &RawCrowdsec, https: bool) -> Option<Option<ClientCert>> {
        let (cert, key) = match (set(raw.cert_file.as_ref()), set(raw.key_file.as_ref())) {
            (None, None) => return Some(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(one), None) | (None, Some(one)) => {
                self.err(
                    one.span(),
                    "crowdsec: cert_file and key_file go together (a client certificate and its key)",
                );
                return None;
            }
        };
        if !https {
            self.err(
                cert.span(),
                "crowdsec.cert_file: only for an https:// lapi_url",
            );
            return None;
        }
        let chain = read_pem(cert.get_ref(), |pem| {
            Ok((
                certificates(pem)?,
                String::from_utf8_lossy(pem).into_owned(),
            ))
        });
        let chain = self.pem_result("crowdsec.cert_file", cert, chain);
        let private = read_pem(key.get_ref(), |pem| {
            let der = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| format!("no PEM private key in it: {e}"))?;
            Ok((der, String::from_utf8_lossy(pem).into_owned()))
        });
        let private = self.pem_result("crowdsec.key_file", key, private);
        let ((chain, chain_pem), (private, private_pem)) = (chain?, private?);
        // The pair as the TLS client will load it: a key of another
        // certificate is caught here, not at the first pull.
        let provider = rustls::crypto::ring::default_provider();
        if let Err(e) = rustls::sign::CertifiedKey::from_der(chain, private, &provider) {
            self.err(
                cert.span(),
                format!(
                    "crowdsec.cert_file: {}: does not go with key_file {}: {e}",
                    cert.get_ref(),
                    key.get_ref()
                ),
            );
            return None;
        }
        Some(Some(ClientCert {
            cert_file: PathBuf::from(cert.get_ref()),
            key_file: PathBuf::from(key.get_ref()),
            pem: Secret(format!("{private_pem}\n{chain_pem}")),
        }))
    }

    fn pem_result<T>(&mut self, path: &str, raw: &Text, read: Result<T, String>) -> Option<T> {
        match read {
            Ok(v) => Some(v),
            Err(why) => {
                self.err(raw.span(), format!("{path}: {}: {why}", raw.get_ref()));
                None
            }
        }
    }

    fn scenario(&mut self, raw: Option<&Text>) -> Option<String> {
        match raw {
            None => Some("sniroute/unknown-sni".to_owned()),
            Some(t) if t.get_ref().trim().is_empty() => {
                self.err(
                    t.span(),
                    "crowdsec.scenario: empty (pushed decisions need a scenario, like \"sniroute/unknown-sni\")",
                );
                None
            }
            Some(t) => self.bounded("crowdsec.scenario", t),
        }
    }

    fn push(
        &mut self,
        raw: &RawCrowdsec,
        machine_id: Option<String>,
        scenario: Option<String>,
        certified: bool,
    ) -> Option<PushConfig> {
        if certified {
            // The LAPI logs the machine in by its certificate.
            return Some(PushConfig {
                machine_id,
                password_file: PathBuf::from(""),
                password: None,
                scenario: scenario?,
            });
        }
        if raw
            .machine_id
            .as_ref()
            .is_none_or(|t| t.get_ref().trim().is_empty())
        {
            let span = raw.machine_id.as_ref().map_or(0..0, |t| t.span());
            self.err(
                span,
                "crowdsec.machine_id: required with push = true \
                 (the name given to `cscli machines add NAME --password ...`)",
            );
        }
        let password = self.secret_file(
            "crowdsec.password_file",
            raw.password_file.as_ref(),
            "/etc/sniroute/crowdsec.pass",
            "cscli machines add NAME --password ...",
        );
        Some(PushConfig {
            machine_id: Some(machine_id?),
            password_file: password.0,
            password: Some(password.1?),
            scenario: scenario?,
        })
    }

    fn bounded(&mut self, path: &str, raw: &Text) -> Option<String> {
        let text = raw.get_ref().trim();
        if text.len() > MAX_SECRET || text.chars().any(char::is_control) {
            self.err(
                raw.span(),
                format!("{path}: too long or has control characters"),
            );
            return None;
        }
        Some(text.to_owned())
    }

    fn lapi_url(&mut self, raw: &Text) -> Option<Url> {
        let text = raw.get_ref().trim();
        let msg = match Url::parse(text) {
            Err(e) => format!(
                "crowdsec.lapi_url: invalid URL {text:?}: {e} (expected like \"http://127.0.0.1:8080\")"
            ),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("crowdsec.lapi_url: {text:?}: expected an http:// or https:// URL")
            }
            Ok(url) if url.host_str().is_none() => {
                format!("crowdsec.lapi_url: {text:?} has no host")
            }
            Ok(url) if url.scheme() == "http" && !is_loopback(&url) => format!(
                "crowdsec.lapi_url: {text:?}: plain http only to a loopback address \
                 (the bouncer key would cross the network in clear); use https://"
            ),
            Ok(url)
                if url.query().is_some()
                    || url.fragment().is_some()
                    || !url.username().is_empty() =>
            {
                format!(
                    "crowdsec.lapi_url: {text:?}: no query, fragment or user part, only scheme://host:port[/path]"
                )
            }
            Ok(mut url) => {
                // A base path must end in '/' so the API paths join below it.
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                return Some(url);
            }
        };
        self.err(raw.span(), msg);
        None
    }

    /// Reads the first line of the file at `raw` (or `default`): `(path, secret)`.
    fn secret_file(
        &mut self,
        path: &str,
        raw: Option<&Text>,
        default: &str,
        how: &str,
    ) -> (PathBuf, Option<Secret>) {
        let file = PathBuf::from(raw.map_or(default, |t| t.get_ref().as_str()));
        let span = raw.map_or(0..0, |t| t.span());
        let msg = match read_secret(&file) {
            Ok(secret) => return (file, Some(secret)),
            Err(why) => format!(
                "{path}: {}: {why} (write the secret from `{how}` in it)",
                file.display()
            ),
        };
        self.err(span, msg);
        (file, None)
    }
}

/// `raw` unless unset or "".
fn set(raw: Option<&Text>) -> Option<&Text> {
    raw.filter(|t| !t.get_ref().trim().is_empty())
}

/// Every PEM certificate in `pem`: at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(certs)
}

/// Reads a PEM file (bounded) and hands its bytes to `parse`; `Err` says
/// why it is unusable.
fn read_pem<T>(file: &str, parse: impl FnOnce(&[u8]) -> Result<T, String>) -> Result<T, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!("larger than {MAX_PEM} bytes"));
    }
    parse(&bytes)
}

/// The first line of a secret file, trimmed; `Err` says why it is unusable.
fn read_secret(file: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err("empty".into());
    }
    if line.len() > MAX_SECRET || line.chars().any(char::is_control) {
        return Err("not a key: too long or has control characters".into());
    }
    Ok(Secret(line.to_owned()))
}

/// True for `localhost`, 127.0.0.0/8 and ::1.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    const BASE: &str = "listen = [\"127.0.0.1:8443\"]\n[[route]]\nsni = [\"a.example\"]\nbackend = \"127.0.0.1:9\"\n";

    fn with(section: &str) -> Result<crate::config::Config, Vec<String>> {
        parse_str(&format!("{BASE}[crowdsec]\n{section}")).map_err(|d| {
            d.into_iter()
                .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
                .collect()
        })
    }

    #[test]
    fn off_unless_a_url_is_given_but_checked_anyway() {
        assert!(parse_str(BASE).unwrap().crowdsec.is_none());
        assert!(with("lapi_url = \"\"\n").unwrap().crowdsec.is_none());
        let e = with("lapi_url = \"\"\nupdate_frequency = \"soon\"\n").unwrap_err();
        assert!(
            e[0].contains("crowdsec.update_frequency: invalid duration"),
            "{e:?}"
        );
        let e = with("lapi_url = \"\"\nupdate_every = \"10s\"\n").unwrap_err();
        assert!(
            e[0].contains("unknown key \"update_every\" in [crowdsec]"),
            "{e:?}"
        );
    }

    #[test]
    fn urls_keys_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let pass = dir.path().join("p");
        std::fs::write(&key, "0123abcd\n").unwrap();
        std::fs::write(&pass, "hunter2\n").unwrap();
        let (k, p) = (key.display(), pass.display());
        let c = with(&format!(
            "lapi_url = \"http://127.0.0.1:8080\"\napi_key_file = \"{k}\"\npush = true\nmachine_id = \"gw1\"\npassword_file = \"{p}\"\n"
        ))
        .unwrap()
        .crowdsec
        .unwrap();
        assert_eq!(c.lapi_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.api_key.as_ref().unwrap().expose(), "0123abcd");
        assert_eq!(c.update_frequency, std::time::Duration::from_secs(10));
        let push = c.push.clone().unwrap();
        assert_eq!(
            (
                push.machine_id.as_deref().unwrap(),
                push.password.as_ref().unwrap().expose()
            ),
            ("gw1", "hunter2")
        );
        assert_eq!(push.scenario, "sniroute/unknown-sni");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123abcd") && !shown.contains("hunter2"),
            "{shown}"
        );

        let https = with(&format!(
            "lapi_url = \"https://lapi.example:8080/cs\"\napi_key_file = \"{k}\"\n"
        ));
        assert_eq!(
            https.unwrap().crowdsec.unwrap().lapi_url.as_str(),
            "https://lapi.example:8080/cs/"
        );
        let e = with(&format!(
            "lapi_url = \"http://10.0.0.2:8080\"\napi_key_file = \"{k}\"\n"
        ))
        .unwrap_err();
        assert!(
            e[0].starts_with("6:12: crowdsec.lapi_url") && e[0].contains("https://"),
            "{e:?}"
        );
        let e = with("lapi_url = \"ftp://127.0.0.1\"\napi_key_file = \"/nonexistent/k\"\n")
            .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[1].contains("crowdsec.api_key_file: /nonexistent/k: cannot read"),
            "{e:?}"
        );
        let e = with(&format!(
            "lapi_url = \"http://[::1]:8080\"\napi_key_file = \"{k}\"\npush = true\n"
        ))
        .unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.contains("crowdsec.machine_id: required with push")),
            "{e:?}"
        );
        std::fs::write(&key, "\n").unwrap();
        let e = with(&format!(
            "lapi_url = \"http://localhost:8080\"\napi_key_file = \"{k}\"\n"
        ))
        .unwrap_err();
        assert!(e[0].contains(": empty"), "{e:?}");
    }

    #[test]
    fn tls_files_for_an_https_lapi() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = file("ca.pem", &params.self_signed(&ca_key).unwrap().pem());
        let key_pem = rcgen::KeyPair::generate().unwrap();
        let cert = file(
            "c.pem",
            &rcgen::CertificateParams::new(vec!["gw1".to_owned()])
                .unwrap()
                .self_signed(&key_pem)
                .unwrap()
                .pem(),
        );
        let key = file("c.key", &key_pem.serialize_pem());
        let junk = file("junk.pem", "hello\n");
        let url = "lapi_url = \"https://lapi.example:8080\"\n";

        // Client certificate: no key file, no password needed, even with push.
        let c = with(&format!(
            "{url}ca_cert_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\npush = true\n"
        ))
        .unwrap()
        .crowdsec
        .unwrap();
        assert_eq!(c.ca_certs.len(), 1);
        assert!(c.api_key.is_none());
        let client = c.client_cert.clone().unwrap();
        assert!(client.pem.expose().contains("PRIVATE KEY"));
        assert!(client.pem.expose().contains("BEGIN CERTIFICATE"));
        assert!(!format!("{c:?}").contains("PRIVATE KEY"));
        let push = c.push.unwrap();
        assert_eq!((push.machine_id, push.password), (None, None));

        // Errors, each at its key.
        let e = with(&format!(
            "lapi_url = \"http://127.0.0.1:8080\"\napi_key_file = \"{ca}\"\nca_cert_file = \"{ca}\"\n"
        ))
        .unwrap_err();
        assert!(
            e[0].starts_with("8:16: crowdsec.ca_cert_file: only for an https:// lapi_url"),
            "{e:?}"
        );
        let e = with(&format!(
            "{url}api_key_file = \"{ca}\"\nca_cert_file = \"{junk}\"\n"
        ))
        .unwrap_err();
        assert!(
            e[0].starts_with("8:16: crowdsec.ca_cert_file: ")
                && e[0].contains("no PEM certificate"),
            "{e:?}"
        );
        let e = with(&format!(
            "{url}api_key_file = \"{ca}\"\nca_cert_file = \"/nonexistent.pem\"\n"
        ))
        .unwrap_err();
        assert!(e[0].contains("/nonexistent.pem: cannot read"), "{e:?}");
        let e = with(&format!("{url}cert_file = \"{cert}\"\n")).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("7:13: crowdsec: cert_file and key_file go together"),
            "{e:?}"
        );
        let other_key = file(
            "other.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let e = with(&format!(
            "{url}cert_file = \"{cert}\"\nkey_file = \"{other_key}\"\n"
        ))
        .unwrap_err();
        assert!(
            e[0].starts_with("7:13: crowdsec.cert_file: ")
                && e[0].contains("does not go with key_file"),
            "{e:?}"
        );
        let e = with(&format!(
            "{url}cert_file = \"{key}\"\nkey_file = \"{cert}\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("7:13: crowdsec.cert_file: "), "{e:?}");
        assert!(
            e[1].starts_with("8:12: crowdsec.key_file: ") && e[1].contains("no PEM private key"),
            "{e:?}"
        );
    }
}
