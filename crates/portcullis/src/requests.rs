//! Control requests other than `status`, answered on the packet thread
//! (which owns the engine). Bans and unbans are answered once the kernel
//! thread has committed them.

use std::time::Duration;

use crossbeam_channel::Sender;
use portcullis_engine::events::rfc3339;
use portcullis_engine::Engine;

use crate::clock::now;
use crate::control::{Answer, BanView, Request};
use crate::kernel_thread::{Ack, KernelCmd};

/// Answers a control request other than `status` (the packet thread owns
/// the engine). Bans and unbans are answered once the kernel has them.
pub fn answer(
    engine: &mut Engine,
    req: &Request,
    kernel: &Sender<KernelCmd>,
    enforced: bool,
) -> Answer {
    let t = now();
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
    match *req {
        Request::Status | Request::Top { .. } => {
            Answer::Now(Err("status and top are answered by the caller".into()))
        }
        Request::Bans => {
            let mut bans: Vec<BanView> = engine
                .bans()
                .iter()
                .map(|b| BanView::new(b, t, enforced))
                .collect();
            bans.sort_by_key(|b| (b.seconds_left, b.addr));
            Answer::Now(json(serde_json::to_value(bans)))
        }
        Request::Ban {
            addr,
            seconds,
            ref reason,
        } => {
            let duration = match seconds {
                Some(0) => return Answer::Now(Err("a ban must last more than 0 s".into())),
                Some(s) => Duration::from_secs(s),
                None => engine.config().scan.ban_duration,
            };
            let rules = &engine.config().rules;
            if addr.is_loopback() {
                return Answer::Now(Err(format!("{addr} is loopback: never banned")));
            }
            if let Some(v) = rules.allowlisted_by(addr) {
                return Answer::Now(Err(format!(
                    "{addr} is never banned: {} (remove it there first)",
                    rules.describe(v)
                )));
            }
            let reason = reason.clone().unwrap_or_else(|| "manual".to_owned());
            if !engine.ban(addr, t, duration, reason) {
                let until = engine.bans().get(&addr).map(|b| b.until);
                return Answer::Now(Err(match until {
                    Some(u) => format!(
                        "{addr} is already banned until {} (unban it first to shorten the ban)",
                        rfc3339(u)
                    ),
                    None => format!("{addr} cannot be banned"),
                }));
            }
            let Some(ban) = engine.bans().get(&addr).cloned() else {
                return Answer::Now(Err(format!("{addr} cannot be banned")));
            };
            let view = json(serde_json::to_value(BanView::new(&ban, t, enforced)));
            kernel_answer(kernel, |ack| KernelCmd::ban(ban, Some(ack)), view)
        }
        Request::Explain { addr } => {
            // Wall-clock time: the engine's packet time stands still when
            // no packets come.
            Answer::Now(json(serde_json::to_value(engine.explain(addr, t))))
        }
        Request::Unban { addr } => {
            if !engine.unban(addr, t) {
                return Answer::Now(Err(format!("{addr} is not banned")));
            }
            let v = json(Ok(
                serde_json::json!({ "addr": addr, "unbanned": true, "enforced": enforced }),
            ));
            kernel_answer(kernel, |ack| KernelCmd::Unban(addr, Some(ack)), v)
        }
    }
}

/// Sends a change to the kernel thread; the answer waits for its commit.
fn kernel_answer(
    kernel: &Sender<KernelCmd>,
    cmd: impl FnOnce(Ack) -> KernelCmd,
    value: std::result::Result<serde_json::Value, String>,
) -> Answer {
    let value = match value {
        Ok(v) => v,
        Err(e) => return Answer::Now(Err(e)),
    };
    let (ack, done) = crossbeam_channel::bounded(1);
    match kernel.try_send(cmd(ack)) {
        Ok(()) => Answer::AfterKernel(value, done),
        Err(_) => Answer::Now(Err(
            "the kernel thread is busy or stopped; the change applies in user space only".into(),
        )),
    }
}
