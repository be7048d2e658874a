//! The passive packet path (monitor mode, dry run): libpcap capture on one
//! or more interfaces -> the same engine, nothing inline. Would-be drops are
//! logged as `would_block`; scans are detected and, with `--enforce-bans`,
//! banned in the kernel's ban set (the only kernel rules then).
//!
//! An interface that fails (a read error, taken down, removed or replaced
//! by another of its name) is closed and named in a [`SourceFailure`]; the
//! others go on, and the packet loop reopens it once it is back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portcullis_capture::live::{LiveCapture, LiveOptions};
use portcullis_capture::CaptureError;
use portcullis_engine::events::{Body, CaptureEvent, CaptureInfo, Event, SourceKind};
use portcullis_engine::Engine;
use portcullis_wire::PacketIn;

use crate::clock::now;
use crate::path::{PacketPath, SourceFailure, SourceId};
use crate::status::{CaptureStatus, Status};

/// The capture and the losses already reported.
pub struct MonitorPath {
    capture: LiveCapture,
    /// Per interface: (dropped, if_dropped) reported so far.
    reported: HashMap<String, (u64, u64)>,
    /// What the daemon says once it serves.
    ready: String,
    /// The interfaces given, for errors that name none.
    interfaces: Vec<String>,
    /// When the interfaces were last checked (down, removed, replaced).
    last_check: Instant,
}

/// How often the interfaces' state is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl MonitorPath {
    /// The failure of the interface `e` names (else the first given).
    fn failure(&self, e: CaptureError) -> SourceFailure {
        let name = match &e {
            CaptureError::Live { iface, .. }
            | CaptureError::PermissionDenied { iface, .. }
            | CaptureError::UnsupportedInterfaceLink { iface, .. } => Some(iface.clone()),
            CaptureError::NoSuchInterface(n)
            | CaptureError::InterfaceDown(n)
            | CaptureError::InterfaceReplaced(n) => Some(n.clone()),
            _ => None,
        }
        .unwrap_or_else(|| self.interfaces.first().cloned().unwrap_or_default());
        // What an interface coming back cannot change: the filter, capture
        // rights (we never drop them), the interface's link type.
        let fatal = matches!(
            e,
            CaptureError::BadFilter { .. }
                | CaptureError::PermissionDenied { .. }
                | CaptureError::UnsupportedInterfaceLink { .. }
        );
        SourceFailure {
            id: SourceId::new(SourceKind::Capture, name),
            error: e.into(),
            fatal,
        }
    }
}

impl MonitorPath {
    pub fn open(interfaces: &[String], bpf: Option<&str>) -> Result<Self> {
        let opts = LiveOptions {
            interfaces: interfaces.to_vec(),
            bpf: bpf.map(str::to_owned),
            ..LiveOptions::default()
        };
        let capture = LiveCapture::open(&opts).context("opening the capture")?;
        Ok(Self {
            capture,
            reported: HashMap::new(),
            interfaces: interfaces.to_vec(),
            last_check: Instant::now(),
            ready: format!(
                "monitoring {} (passive: nothing is dropped inline){}",
                interfaces.join(", "),
                bpf.map(|f| format!(", filter {f:?}")).unwrap_or_default()
            ),
        })
    }
}

impl PacketPath for MonitorPath {
    fn ready_line(&self) -> String {
        self.ready.clone()
    }

    fn step(&mut self, engine: &mut Engine, wait: Duration) -> Result<(), SourceFailure> {
        if self.last_check.elapsed() >= CHECK_EVERY {
            self.last_check = Instant::now();
            self.capture.check().map_err(|e| self.failure(e))?;
        }
        let n = self
            .capture
            .next_batch(wait, &mut |p| {
                engine.process(&PacketIn {
                    data: p.packet.data,
                    link: p.packet.link,
                    ts: p.packet.ts,
                    dir: p.dir,
                    orig_len: Some(p.packet.orig_len),
                });
            })
            .map_err(|e| self.failure(e))?;
        if n > 0 {
            engine.flush_due();
        }
        Ok(())
    }

    fn reopen(&mut self, id: &SourceId) -> Result<(), SourceFailure> {
        let i = self
            .capture
            .position(&id.name)
            .ok_or_else(|| SourceFailure {
                id: id.clone(),
                error: anyhow::anyhow!("not one of the captured interfaces"),
                fatal: true,
            })?;
        self.capture.reopen(i).map_err(|e| self.failure(e))
    }

    fn losses(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for s in self.capture.stats() {
            let seen = self.reported.entry(s.name.clone()).or_default();
            let (d, i) = (
                s.dropped.saturating_sub(seen.0),
                s.if_dropped.saturating_sub(seen.1),
            );
            if d == 0 && i == 0 {
                continue;
            }
            *seen = (s.dropped, s.if_dropped);
            let capture = CaptureInfo {
                interface: s.name,
                dropped: d,
                if_dropped: i,
            };
            out.push(Event::new(now(), Body::Capture(CaptureEvent { capture })));
        }
        out
    }

    fn status(&mut self, s: &mut Status) {
        s.capture = self
            .capture
            .stats()
            .into_iter()
            .map(|c| CaptureStatus {
                interface: c.name,
                received: c.received,
                dropped: c.dropped,
                if_dropped: c.if_dropped,
            })
            .collect();
    }

    fn finish(&mut self) {}
}
