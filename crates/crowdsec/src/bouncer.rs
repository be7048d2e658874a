//! The bouncer side: pull decisions with an API key.

use std::fmt;

use crate::client::{ClientConfig, Http};
use crate::decision::{parse_stream, Delta, Limits};
use crate::error::CrowdsecError;

/// A bouncer: reads the decision stream with its API key
/// (`cscli bouncers add NAME` makes one).
///
/// One `Bouncer` per key: the LAPI remembers, per bouncer, when it last
/// pulled, and a delta pull returns what changed since.
pub struct Bouncer {
    http: Http,
    api_key: String,
    limits: Limits,
}

impl fmt::Debug for Bouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bouncer")
            .field("url", &self.http.url(""))
            .field("api_key", &"<redacted>")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Bouncer {
    /// A bouncer for the LAPI in `config`. Checks the URL and reads the
    /// TLS files; does not connect.
    ///
    /// With a client certificate ([`TlsOptions`](crate::TlsOptions)) whose
    /// OU the LAPI allows for bouncers (`api.server.tls.bouncers_allowed_ou`),
    /// `api_key` may be empty: no key is sent and the LAPI registers the
    /// bouncer from the certificate (`CN@address`).
    pub fn new(
        config: &ClientConfig,
        api_key: impl Into<String>,
    ) -> Result<Bouncer, CrowdsecError> {
        Ok(Bouncer {
            http: Http::new(config)?,
            api_key: api_key.into(),
            limits: config.limits,
        })
    }

    /// `GET /v1/decisions/stream?startup=...`.
    ///
    /// `startup = true` returns every active decision under `new` (and the
    /// deleted or expired ones still in the LAPI's database under
    /// `deleted`): use it first, and after any gap, then replace the whole
    /// set. `startup = false` returns what changed since this bouncer's
    /// last pull. A fresh bouncer's delta pull misses decisions that
    /// existed before it was registered.
    pub fn stream(&self, startup: bool) -> Result<Delta, CrowdsecError> {
        let path = if startup {
            "/v1/decisions/stream?startup=true"
        } else {
            "/v1/decisions/stream?startup=false"
        };
        let key = (!self.api_key.is_empty()).then_some(("X-Api-Key", self.api_key.as_str()));
        let answer = self.http.get(path, key)?;
        let url = self.http.url(path);
        match answer.status {
            200 => parse_stream(&answer.body, &self.limits)
                .map_err(|source| CrowdsecError::Stream { url, source }),
            status @ (401 | 403) => Err(CrowdsecError::BadApiKey { url, status }),
            status => Err(CrowdsecError::Status {
                url,
                status,
                message: answer.message(),
            }),
        }
    }

    /// `GET /health` (no authentication): `Ok` when the LAPI answers 200.
    pub fn health(&self) -> Result<(), CrowdsecError> {
        let answer = self.http.get("/health", None)?;
        match answer.status {
            200 => Ok(()),
            status => Err(CrowdsecError::Status {
                url: self.http.url("/health"),
                status,
                message: answer.message(),
            }),
        }
    }
}
