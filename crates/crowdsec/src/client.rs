//! Connection settings and the HTTP layer shared by [`Bouncer`] and
//! [`Watcher`].
//!
//! [`Bouncer`]: crate::Bouncer
//! [`Watcher`]: crate::Watcher

use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::decision::Limits;
use crate::error::CrowdsecError;

/// TLS files for a remote LAPI (`https://`). All PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// CA certificates the LAPI's certificate must chain to, instead of
    /// the built-in public (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) for a LAPI that authenticates bouncers
    /// or machines by certificate; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// Where the LAPI is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/` or `https://lapi.example:8080/`.
    pub url: String,
    /// TLS files (only with `https://`).
    pub tls: TlsOptions,
    /// Timeout of one whole request (connect, send, read the answer).
    pub timeout: Duration,
    /// Sent as User-Agent; the LAPI shows its first word as the bouncer's
    /// type and the rest as its version (`cscli bouncers list`).
    pub user_agent: String,
    /// Largest answer read, in bytes.
    pub max_body_bytes: u64,
    /// Bounds on one decision stream answer.
    pub limits: Limits,
    /// Allow `http://` to a host that is not loopback: the API key, the
    /// password and the JWT then cross the network in clear.
    pub danger_plain_http_remote: bool,
}

impl ClientConfig {
    /// Defaults for `url`: 10 s timeout, User-Agent `portcullis/<version>`,
    /// 128 MiB answers, [`Limits::default`].
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            tls: TlsOptions::default(),
            timeout: Duration::from_secs(10),
            user_agent: format!("portcullis/v{}", env!("CARGO_PKG_VERSION")),
            max_body_bytes: 128 << 20,
            limits: Limits::default(),
            danger_plain_http_remote: false,
        }
    }
}

/// One HTTP answer: status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The `message` field of a JSON error answer, else the start of the
    /// body.
    pub fn message(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Msg {
            message: String,
        }
        match serde_json::from_slice::<Msg>(&self.body) {
            Ok(m) => m.message,
            Err(_) => String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned(),
        }
    }
}

/// The agent and the base URL.
#[derive(Debug)]
pub(crate) struct Http {
    agent: ureq::Agent,
    base: String,
    max_body_bytes: u64,
}

impl Http {
    pub fn new(config: &ClientConfig) -> Result<Http, CrowdsecError> {
        let https = check_url(config)?;
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(config.timeout))
            .user_agent(config.user_agent.as_str());
        if https {
            builder = builder.tls_config(tls_config(&config.tls)?);
        } else if config.tls != TlsOptions::default() {
            return Err(CrowdsecError::BadUrl {
                url: config.url.clone(),
                why: "TLS files are configured but the URL is http://; use https://",
            });
        }
        Ok(Http {
            agent: builder.build().new_agent(),
            base: config.url.trim_end_matches('/').to_owned(),
            max_body_bytes: config.max_body_bytes,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET`, with an optional extra header.
    pub fn get(&self, path: &str, header: Option<(&str, &str)>) -> Result<Answer, CrowdsecError> {
        let url = self.url(path);
        let mut req = self.agent.get(&url);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let result = req.call();
        self.finish(&url, result)
    }

    /// `POST` of a JSON body, with an optional extra header.
    pub fn post_json(
        &self,
        path: &str,
        header: Option<(&str, &str)>,
        body: &serde_json::Value,
    ) -> Result<Answer, CrowdsecError> {
        let url = self.url(path);
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json");
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let result = req.send(body.to_string());
        self.finish(&url, result)
    }

    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, CrowdsecError> {
        let mut response = result.map_err(|e| transport_error(url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body_bytes)
            .read_to_vec()
            .map_err(|e| transport_error(url, e))?;
        Ok(Answer { status, body })
    }
}

fn transport_error(url: &str, e: ureq::Error) -> CrowdsecError {
    let url = url.to_owned();
    match e {
        ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => {
            CrowdsecError::ConnectionRefused { url }
        }
        ureq::Error::ConnectionFailed => CrowdsecError::ConnectionRefused { url },
        ureq::Error::HostNotFound => CrowdsecError::HostNotFound { url },
        ureq::Error::Timeout(t) => CrowdsecError::Timeout {
            url,
            what: t.to_string(),
        },
        ureq::Error::BodyExceedsLimit(limit) => CrowdsecError::BodyTooLarge { url, limit },
        ureq::Error::Tls(why) => CrowdsecError::Tls {
            url,
            why: why.to_owned(),
        },
        ureq::Error::Rustls(e) => CrowdsecError::Tls {
            url,
            why: e.to_string(),
        },
        // rustls' errors (untrusted certificate, ...) come wrapped in I/O
        // errors.
        ureq::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            CrowdsecError::Tls {
                url,
                why: io.to_string(),
            }
        }
        other => CrowdsecError::Transport {
            url,
            source: Box::new(other),
        },
    }
}

/// Checks the URL's scheme and, for plain HTTP, that the host is loopback.
/// Returns whether it is https.
fn check_url(config: &ClientConfig) -> Result<bool, CrowdsecError> {
    let bad = |why| CrowdsecError::BadUrl {
        url: config.url.clone(),
        why,
    };
    let (https, rest) = if let Some(rest) = config.url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = config.url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("it must start with http:// or https://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("it must name a host (and no user)"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("it must be a base URL, without query or fragment"));
    }
    if !https && !config.danger_plain_http_remote && !is_loopback_authority(authority) {
        return Err(bad(
            "plain http:// is only for a LAPI on this host (loopback); use https:// \
             (or set danger_plain_http_remote)",
        ));
    }
    Ok(https)
}

fn is_loopback_authority(authority: &str) -> bool {
    // [v6]:port, [v6], host:port, host
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, CrowdsecError> {
    fs::read(path).map_err(|source| CrowdsecError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_items(what: &'static str, path: &Path) -> Result<Vec<PemItem<'static>>, CrowdsecError> {
    let bytes = read(what, path)?;
    ureq::tls::parse_pem(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrowdsecError::BadPem {
            what,
            path: path.to_owned(),
            why: e.to_string(),
        })
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<Certificate<'static>>, CrowdsecError> {
    let certs: Vec<_> = pem_items(what, path)?
        .into_iter()
        .filter_map(|i| match i {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(CrowdsecError::BadPem {
            what,
            path: path.to_owned(),
            why: "no CERTIFICATE in it".to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKey<'static>, CrowdsecError> {
    const WHAT: &str = "client key";
    pem_items(WHAT, path)?
        .into_iter()
        .find_map(|i| match i {
            PemItem::PrivateKey(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| CrowdsecError::BadPem {
            what: WHAT,
            path: path.to_owned(),
            why: "no PRIVATE KEY in it".to_owned(),
        })
}

/// Builds the rustls configuration from the TLS files.
pub(crate) fn tls_config(opts: &TlsOptions) -> Result<TlsConfig, CrowdsecError> {
    let mut builder = TlsConfig::builder();
    if let Some(ca) = &opts.ca_file {
        builder = builder.root_certs(RootCerts::new_with_certs(&certificates("CA file", ca)?));
    }
    match (&opts.client_cert, &opts.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("client certificate", cert)?;
            let key = private_key(key)?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        (Some(path), None) | (None, Some(path)) => {
            return Err(CrowdsecError::BadPem {
                what: "client certificate or key",
                path: path.clone(),
                why: "a client certificate needs both the certificate and its key".to_owned(),
            })
        }
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> Result<Http, CrowdsecError> {
        Http::new(&ClientConfig::new(url))
    }

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://[::1]:8080/",
            "http://127.9.9.9",
            "https://lapi.example:8080/",
            "https://192.0.2.1/",
        ] {
            assert!(http(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:8080",
            "ftp://127.0.0.1/",
            "http://192.0.2.1:8080/",
            "http://lapi.example/",
            "http://[2001:db8::1]:8080/",
            "http:///",
            "http://user@127.0.0.1/",
            "http://127.0.0.1/?x=1",
        ] {
            assert!(
                matches!(http(bad), Err(CrowdsecError::BadUrl { .. })),
                "{bad}"
            );
        }
        let mut c = ClientConfig::new("http://192.0.2.1:8080/");
        c.danger_plain_http_remote = true;
        assert!(Http::new(&c).is_ok());
        assert_eq!(
            http("http://127.0.0.1:8080/").unwrap().url("/v1/x"),
            "http://127.0.0.1:8080/v1/x"
        );
    }

    #[test]
    fn tls_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ClientConfig::new("http://127.0.0.1:8080/");
        c.tls.ca_file = Some(dir.path().join("ca.pem"));
        assert!(matches!(Http::new(&c), Err(CrowdsecError::BadUrl { .. })));

        c.url = "https://lapi.example/".into();
        let e = Http::new(&c).unwrap_err();
        assert!(matches!(e, CrowdsecError::ReadFile { .. }), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");

        fs::write(dir.path().join("ca.pem"), "not a pem\n").unwrap();
        let e = Http::new(&c).unwrap_err();
        assert!(matches!(e, CrowdsecError::BadPem { .. }), "{e}");

        c.tls.ca_file = None;
        c.tls.client_cert = Some(dir.path().join("cert.pem"));
        let e = Http::new(&c).unwrap_err();
        assert!(e.to_string().contains("needs both"), "{e}");
    }
}
