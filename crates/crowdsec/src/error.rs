//! Errors, each saying what to check.

use std::path::PathBuf;

use crate::decision::ParseError;

/// Everything the client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CrowdsecError {
    /// The URL in the configuration is not usable.
    #[error("bad CrowdSec LAPI URL {url:?}: {why}")]
    BadUrl {
        /// As configured.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Nothing listens there.
    #[error(
        "cannot connect to the CrowdSec Local API at {url}: connection refused; \
         is crowdsec running, and does api.server.listen_uri in its config.yaml name this address and port?"
    )]
    ConnectionRefused {
        /// The request's URL.
        url: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve the CrowdSec LAPI host in {url}: check the URL")]
    HostNotFound {
        /// The request's URL.
        url: String,
    },
    /// No answer in time.
    #[error("the CrowdSec Local API at {url} did not answer within the timeout ({what})")]
    Timeout {
        /// The request's URL.
        url: String,
        /// Which timeout.
        what: String,
    },
    /// TLS failed (certificate not trusted, name mismatch, client
    /// certificate refused, plain HTTP server).
    #[error(
        "TLS with the CrowdSec Local API at {url} failed: {why}; check the CA file \
         (the LAPI's certificate must chain to it and name this host) and the client certificate"
    )]
    Tls {
        /// The request's URL.
        url: String,
        /// The TLS library's reason.
        why: String,
    },
    /// Another transport error.
    #[error("request to the CrowdSec Local API at {url} failed: {source}")]
    Transport {
        /// The request's URL.
        url: String,
        /// The HTTP library's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The bouncer key was refused (403, or 401 from some versions).
    #[error(
        "the CrowdSec Local API at {url} refused the bouncer API key (HTTP {status}): \
         check the key; `cscli bouncers list` shows the registered bouncers, \
         `cscli bouncers add NAME` makes a new key"
    )]
    BadApiKey {
        /// The request's URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The machine login was refused.
    #[error(
        "the CrowdSec Local API refused the login of machine {machine_id:?} (HTTP {status}: {message}): \
         check the machine id and password; `cscli machines list` shows them, \
         `cscli machines add NAME --password ...` registers one (and `cscli machines validate NAME` \
         if it was registered with `cscli lapi register`)"
    )]
    BadLogin {
        /// The machine id used.
        machine_id: String,
        /// The HTTP status.
        status: u16,
        /// The LAPI's message.
        message: String,
    },
    /// The LAPI refused our alert (it answers 500 on validation errors).
    #[error("the CrowdSec Local API rejected the alert (HTTP {status}): {message}")]
    AlertRejected {
        /// The HTTP status.
        status: u16,
        /// The LAPI's message (its validation failures, one per line).
        message: String,
    },
    /// An unexpected HTTP status.
    #[error("the CrowdSec Local API answered HTTP {status} to {url}: {message}")]
    Status {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's `message`, or the start of its body.
        message: String,
    },
    /// The answer is larger than the configured limit.
    #[error(
        "the answer of {url} is larger than {limit} bytes (ClientConfig::max_body_bytes); \
         raise it or filter the stream (origins, scopes)"
    )]
    BodyTooLarge {
        /// The request's URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The decision stream answer was refused as a whole.
    #[error("the answer of {url} was refused: {source}")]
    Stream {
        /// The request's URL.
        url: String,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// Another answer that is not what the API documents.
    #[error("the answer of {url} is malformed: {why}")]
    Malformed {
        /// The request's URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        /// Which file (`CA file`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM item.
    #[error("{what} {path}: {why}")]
    BadPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl CrowdsecError {
    /// Whether retrying later may help (the LAPI is down, slow, or
    /// answered 5xx), as opposed to a configuration error.
    pub fn is_transient(&self) -> bool {
        match self {
            CrowdsecError::ConnectionRefused { .. }
            | CrowdsecError::Timeout { .. }
            | CrowdsecError::Transport { .. } => true,
            CrowdsecError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
