//! The watcher side: a machine logs in and pushes alerts that carry
//! decisions.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::client::{ClientConfig, Http};
use crate::duration::format_go_duration;
use crate::error::CrowdsecError;

/// The scenario of our alerts and decisions.
pub const SCENARIO: &str = "portcullis/port-scan";
/// The origin of our decisions (what bouncers filter on with
/// `origins=portcullis`).
pub const ORIGIN: &str = "portcullis";
/// A token is renewed this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How long a token whose `expire` does not parse is trusted.
const FALLBACK_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Most ports listed in an alert's meta.
pub const MAX_META_PORTS: usize = 64;

/// A scan finding, as pushed to the LAPI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanAlert {
    /// The scanner.
    pub source: IpAddr,
    /// The scan's kind (`"tcp-syn"`, `"udp"`, ...): meta `kind`.
    pub kind: String,
    /// Ports it probed (a sample; the first [`MAX_META_PORTS`] are sent):
    /// meta `ports`.
    pub ports: Vec<u16>,
    /// Probes counted: meta `probes`, and the alert's `events_count`.
    pub probes: u64,
    /// First probe.
    pub start: SystemTime,
    /// Last probe (or when the threshold was reached).
    pub stop: SystemTime,
    /// Our ban: the alert carries a `ban` decision of this duration. `None`
    /// (or zero) reports without a decision.
    pub ban: Option<Duration>,
}

impl ScanAlert {
    /// The alert as `POST /v1/alerts` wants it (one element of the array):
    /// every field the LAPI requires, `Ip` scope (also for IPv6), our
    /// scenario and origin.
    pub fn to_json(&self) -> Value {
        let ip = self.source.to_canonical().to_string();
        let time =
            |t: SystemTime| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true);
        let ports = self
            .ports
            .iter()
            .take(MAX_META_PORTS)
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let decisions: Vec<Value> = self
            .ban
            .filter(|d| !d.is_zero())
            .map(|d| {
                json!({
                    "duration": format_go_duration(d),
                    "type": "ban",
                    "scope": "Ip",
                    "value": ip,
                    "origin": ORIGIN,
                    "scenario": SCENARIO,
                })
            })
            .into_iter()
            .collect();
        json!({
            "scenario": SCENARIO,
            "scenario_hash": "",
            "scenario_version": env!("CARGO_PKG_VERSION"),
            "message": format!("{} port scan from {ip}: {} probes", self.kind, self.probes),
            "source": {"scope": "Ip", "value": ip, "ip": ip},
            "events": [],
            "events_count": i32::try_from(self.probes).unwrap_or(i32::MAX),
            "capacity": 0,
            "leakspeed": "0",
            "simulated": false,
            "start_at": time(self.start),
            "stop_at": time(self.stop),
            "meta": [
                {"key": "kind", "value": self.kind},
                {"key": "ports", "value": ports},
                {"key": "probes", "value": self.probes.to_string()},
            ],
            "decisions": decisions,
        })
    }
}

#[derive(Clone)]
struct Token {
    jwt: String,
    expire: SystemTime,
}

/// A watcher (a "machine"): logs in with its id and password
/// (`cscli machines add NAME --password ...`) and pushes alerts.
///
/// The JWT is renewed by logging in again when it is missing, within
/// [`RENEW_BEFORE`] of its expiry, or refused (401) once.
pub struct Watcher {
    http: Http,
    machine_id: String,
    password: String,
    token: Option<Token>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("url", &self.http.url(""))
            .field("machine_id", &self.machine_id)
            .field("password", &"<redacted>")
            .field("logged_in", &self.token.is_some())
            .finish()
    }
}

impl Watcher {
    /// A watcher for the LAPI in `config`. Does not connect.
    pub fn new(
        config: &ClientConfig,
        machine_id: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Watcher, CrowdsecError> {
        Ok(Watcher {
            http: Http::new(config)?,
            machine_id: machine_id.into(),
            password: password.into(),
            token: None,
        })
    }

    /// When the current token expires, if logged in.
    pub fn token_expiry(&self) -> Option<SystemTime> {
        self.token.as_ref().map(|t| t.expire)
    }

    /// Forgets the token, so the next call logs in again.
    pub fn logout(&mut self) {
        self.token = None;
    }

    /// `POST /v1/watchers/login`: gets a fresh JWT.
    pub fn login(&mut self) -> Result<(), CrowdsecError> {
        self.token = None;
        let path = "/v1/watchers/login";
        let body = json!({
            "machine_id": self.machine_id,
            "password": self.password,
            "scenarios": [SCENARIO],
        });
        let answer = self.http.post_json(path, None, &body)?;
        let url = self.http.url(path);
        match answer.status {
            200 => {}
            status @ (401 | 403) => {
                return Err(CrowdsecError::BadLogin {
                    machine_id: self.machine_id.clone(),
                    status,
                    message: answer.message(),
                })
            }
            status => {
                return Err(CrowdsecError::Status {
                    url,
                    status,
                    message: answer.message(),
                })
            }
        }
        #[derive(serde::Deserialize)]
        struct Login {
            token: String,
            expire: Option<String>,
        }
        let login: Login =
            serde_json::from_slice(&answer.body).map_err(|e| CrowdsecError::Malformed {
                url: url.clone(),
                why: format!("login answer: {e}"),
            })?;
        if login.token.is_empty() {
            return Err(CrowdsecError::Malformed {
                url,
                why: "login answer has an empty token".to_owned(),
            });
        }
        let expire = login
            .expire
            .as_deref()
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
            .map(SystemTime::from)
            .unwrap_or_else(|| SystemTime::now() + FALLBACK_LIFETIME);
        self.token = Some(Token {
            jwt: login.token,
            expire,
        });
        Ok(())
    }

    /// The token, after logging in if there is none or it expires soon.
    fn bearer(&mut self) -> Result<String, CrowdsecError> {
        let fresh = self
            .token
            .as_ref()
            .is_some_and(|t| SystemTime::now() + RENEW_BEFORE < t.expire);
        if !fresh {
            self.login()?;
        }
        match &self.token {
            Some(t) => Ok(format!("Bearer {}", t.jwt)),
            // login() sets the token or fails.
            None => Err(CrowdsecError::Malformed {
                url: self.http.url("/v1/watchers/login"),
                why: "no token after login".to_owned(),
            }),
        }
    }

    /// `POST /v1/alerts` with one alert (and its ban decision). Returns the
    /// LAPI's alert ids. Logs in first when needed; a 401 (token expired or
    /// revoked) logs in again and retries once.
    pub fn push_alert(&mut self, alert: &ScanAlert) -> Result<Vec<String>, CrowdsecError> {
        let body = Value::Array(vec![alert.to_json()]);
        let path = "/v1/alerts";
        let bearer = self.bearer()?;
        let mut answer = self
            .http
            .post_json(path, Some(("Authorization", &bearer)), &body)?;
        if answer.status == 401 {
            self.login()?;
            let bearer = self.bearer()?;
            answer = self
                .http
                .post_json(path, Some(("Authorization", &bearer)), &body)?;
        }
        let url = self.http.url(path);
        match answer.status {
            200 | 201 => serde_json::from_slice::<Vec<String>>(&answer.body).map_err(|e| {
                CrowdsecError::Malformed {
                    url,
                    why: format!("alert answer: {e}"),
                }
            }),
            status @ (400 | 422 | 500) => Err(CrowdsecError::AlertRejected {
                status,
                message: answer.message(),
            }),
            status => Err(CrowdsecError::Status {
                url,
                status,
                message: answer.message(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> ScanAlert {
        ScanAlert {
            source: "198.51.100.9".parse().unwrap(),
            kind: "tcp-syn".into(),
            ports: (1..=100).collect(),
            probes: 150,
            start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_528_032),
            stop: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_528_042),
            ban: Some(Duration::from_secs(4 * 3600)),
        }
    }

    #[test]
    fn alert_json_has_every_required_field() {
        let j = alert().to_json();
        for field in [
            "capacity",
            "events",
            "events_count",
            "leakspeed",
            "message",
            "scenario",
            "scenario_hash",
            "scenario_version",
            "simulated",
            "source",
            "start_at",
            "stop_at",
        ] {
            assert!(j.get(field).is_some(), "{field} missing");
        }
        assert_eq!(j["scenario"], SCENARIO);
        assert_eq!(j["source"]["scope"], "Ip");
        assert_eq!(j["source"]["value"], "198.51.100.9");
        assert_eq!(j["events"], json!([]));
        assert_eq!(j["events_count"], 150);
        assert_eq!(j["start_at"], "2026-12-06T03:33:52Z");
        assert_eq!(
            j["decisions"],
            json!([{"duration": "14400s", "type": "ban", "scope": "Ip", "value": "198.51.100.9",
                    "origin": "portcullis", "scenario": "portcullis/port-scan"}])
        );
        let meta = &j["meta"];
        assert_eq!(meta[0], json!({"key": "kind", "value": "tcp-syn"}));
        assert_eq!(meta[2], json!({"key": "probes", "value": "150"}));
        let ports = meta[1]["value"].as_str().unwrap();
        assert_eq!(ports.split(',').count(), MAX_META_PORTS);
        assert!(ports.starts_with("1,2,3,"));
    }

    #[test]
    fn alert_without_ban_and_ipv6() {
        let mut a = alert();
        a.ban = None;
        a.source = "::ffff:192.0.2.1".parse().unwrap();
        a.probes = u64::MAX;
        let j = a.to_json();
        assert_eq!(j["decisions"], json!([]));
        assert_eq!(j["source"]["value"], "192.0.2.1");
        assert_eq!(j["events_count"], i32::MAX);
        a.ban = Some(Duration::ZERO);
        assert_eq!(a.to_json()["decisions"], json!([]));
        a.source = "2001:db8::7".parse().unwrap();
        a.ban = Some(Duration::from_millis(1500));
        let j = a.to_json();
        assert_eq!(j["source"]["scope"], "Ip");
        assert_eq!(j["decisions"][0]["value"], "2001:db8::7");
        assert_eq!(j["decisions"][0]["duration"], "1.500s");
    }

    #[test]
    fn debug_hides_secrets() {
        let w = Watcher::new(&ClientConfig::new("http://127.0.0.1:1/"), "m", "hunter2").unwrap();
        assert!(!format!("{w:?}").contains("hunter2"));
        let b = crate::Bouncer::new(&ClientConfig::new("http://127.0.0.1:1/"), "sekrit").unwrap();
        assert!(!format!("{b:?}").contains("sekrit"));
    }
}
