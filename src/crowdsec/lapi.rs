//! The LAPI's HTTP endpoints, over reqwest (hyper + rustls): the bouncer's
//! decision stream (key in `X-Api-Key`), and the machine's login, alerts
//! and decision deletion (JWT in `Authorization: Bearer`, renewed on 401 or
//! before it expires). Every request says `User-Agent: sniroute/<version>`
//! and is bounded in time; no request is retried here (the callers decide).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::{Certificate, Client, Identity, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::config::{CrowdsecConfig, PushConfig, Secret};

/// `User-Agent` of every request: the LAPI shows it in `cscli bouncers list`.
const USER_AGENT: &str = concat!("sniroute/", env!("CARGO_PKG_VERSION"));
/// Connect timeout: the LAPI is on the LAN or the same host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout: a startup pull of a community blocklist (100,000
/// decisions, ~15 MB of JSON) takes well under a second on a LAN; a minute
/// leaves room for a slow LAPI on SQLite without hanging a pull forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest stream body read: ~1.7 million decisions at ~150 bytes each,
/// beyond any blocklist. The body is parsed as it arrives, never held
/// whole; this bounds the time a hostile or broken LAPI can keep a pull
/// busy (with the request timeout).
const MAX_BODY: usize = 256 << 20;
/// A JWT is renewed this long before the `expire` the LAPI gave.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    /// With its causes: reqwest's own text is only "error sending request".
    #[error("{}", with_causes(.0))]
    Http(#[from] reqwest::Error),
    #[error("LAPI answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("bad answer from the LAPI: {0}")]
    Body(String),
}

impl LapiError {
    /// True for 401/403: the key, password or token was refused.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, LapiError::Status { status, .. }
            if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN)
    }
}

/// A client for one LAPI.
#[derive(Clone)]
pub struct Lapi {
    http: Client,
    base: Url,
}

impl Lapi {
    /// Builds the client: for `https`, the system's roots plus
    /// `ca_cert_file`'s, and the client certificate if one is configured.
    pub fn new(config: &CrowdsecConfig) -> anyhow::Result<Lapi> {
        // reqwest is built without a default crypto provider: use ring, the
        // one the rest of the project's TLS code uses. Err = already set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if !config.ca_certs.is_empty() {
            let roots = config
                .ca_certs
                .iter()
                .map(|der| Certificate::from_der(der))
                .collect::<Result<Vec<_>, _>>()?;
            builder = builder.tls_certs_merge(roots);
        }
        if let Some(cert) = &config.client_cert {
            builder = builder.identity(Identity::from_pem(cert.pem.expose().as_bytes())?);
        }
        let http = builder.build()?;
        Ok(Lapi {
            http,
            base: config.lapi_url.clone(),
        })
    }

    fn url(&self, path: &str) -> Result<Url, LapiError> {
        self.base
            .join(path)
            .map_err(|e| LapiError::Body(format!("bad URL {path}: {e}")))
    }

    /// `GET /v1/decisions/stream[?startup=true]`: the body, to be read as
    /// it arrives.
    /// Without a key, the client certificate is the credential.
    pub async fn stream(&self, key: Option<&str>, startup: bool) -> Result<StreamBody, LapiError> {
        let mut url = self.url("v1/decisions/stream")?;
        if startup {
            url.set_query(Some("startup=true"));
        }
        let mut request = self.http.get(url);
        if let Some(key) = key {
            request = request.header("X-Api-Key", key);
        }
        let response = request.send().await?;
        Ok(StreamBody {
            response: ok(response).await?,
            read: 0,
        })
    }

    /// `POST /v1/watchers/login`: a JWT and when it expires. Without a
    /// password, the client certificate is the credential (the LAPI wants
    /// only the scenarios then).
    pub async fn login(&self, push: &PushConfig) -> Result<Token, LapiError> {
        #[derive(Serialize)]
        struct Login<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            machine_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            password: Option<&'a str>,
            scenarios: [&'a str; 1],
        }
        #[derive(Deserialize)]
        struct Answer {
            token: String,
            expire: Option<String>,
        }
        let password = push.password.as_ref().map(Secret::expose);
        let body = Login {
            machine_id: password.and(push.machine_id.as_deref()),
            password,
            scenarios: [&push.scenario],
        };
        let response = self
            .http
            .post(self.url("v1/watchers/login")?)
            .json(&body)
            .send()
            .await?;
        let answer: Answer = ok(response).await?.json().await?;
        let renew_at = answer
            .expire
            .as_deref()
            .and_then(|e| humantime::parse_rfc3339_weak(e.trim_end_matches('Z')).ok())
            .and_then(|t| t.checked_sub(TOKEN_MARGIN))
            // No usable expiry: renew within the hour (CrowdSec's default is 1h).
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(30 * 60));
        Ok(Token {
            jwt: answer.token,
            renew_at,
        })
    }

    /// `POST /v1/alerts` with `alerts` (a JSON array).
    pub async fn post_alerts(
        &self,
        token: &Token,
        alerts: &serde_json::Value,
    ) -> Result<(), LapiError> {
        let response = self
            .http
            .post(self.url("v1/alerts")?)
            .bearer_auth(&token.jwt)
            .json(alerts)
            .send()
            .await?;
        ok(response).await.map(drop)
    }

    /// `DELETE /v1/decisions?{ip|range}=VALUE&scenario=SCENARIO`: the count deleted.
    pub async fn delete_decisions(
        &self,
        token: &Token,
        filter: (&str, &str),
        scenario: &str,
    ) -> Result<u64, LapiError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "nbDeleted")]
            deleted: Option<String>,
        }
        let response = self
            .http
            .delete(self.url("v1/decisions")?)
            .query(&[filter, ("scenario", scenario)])
            .bearer_auth(&token.jwt)
            .send()
            .await?;
        let answer: Answer = ok(response).await?.json().await?;
        Ok(answer.deleted.and_then(|n| n.parse().ok()).unwrap_or(0))
    }
}

/// A decision stream's body, arriving.
pub struct StreamBody {
    response: Response,
    read: usize,
}

impl StreamBody {
    /// The next piece of the body; `None` at its end. A body beyond
    /// [`MAX_BODY`] is an error.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, LapiError> {
        let Some(chunk) = self.response.chunk().await? else {
            return Ok(None);
        };
        self.read += chunk.len();
        if self.read > MAX_BODY {
            return Err(LapiError::Body(format!(
                "decision stream larger than {MAX_BODY} bytes"
            )));
        }
        Ok(Some(chunk))
    }
}

/// A machine's JWT.
#[derive(Clone)]
pub struct Token {
    jwt: String,
    /// Renew before using it after this.
    pub renew_at: SystemTime,
}

/// The response if its status is 2xx, else the status and the start of the body.
async fn ok(response: Response) -> Result<Response, LapiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    /// Enough of an error body for the log line.
    const SHOWN: usize = 200;
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(SHOWN).collect();
    Err(LapiError::Status { status, body })
}

/// `error` and its causes, `: `-joined (the TLS or connect error is a cause).
fn with_causes(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    if text.contains("UnknownIssuer") {
        text.push_str(" (is the LAPI's CA in crowdsec.ca_cert_file?)");
    }
    text
}
