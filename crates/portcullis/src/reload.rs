//! SIGHUP: the config read again, the kernel sets updated, the engine
//! given the new config, while the packet thread keeps serving.
//!
//! Compiling a big list and the nft call take a second or more, so the
//! first half ([`start`]) runs on a thread of its own; the packet thread
//! polls the [`PendingReload`] between batches and does the second half
//! ([`finish`]). On any error the old rules stay in force, in the kernel
//! and in the engine.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use portcullis_engine::config::Config;
use portcullis_engine::events::{Body, Event, ReloadEvent, ReloadInfo};
use portcullis_engine::Engine;

use crate::clock::now;
use crate::config::DaemonConfig;
use crate::kernel_thread::KernelCmd;

/// A reload in progress: the new config, compiled and in the kernel, or
/// why not.
pub type PendingReload = Receiver<std::result::Result<Arc<Config>, String>>;

/// First half, off the packet thread: re-reads the config (with the
/// protected addresses and, passive, the host's addresses as they are now)
/// and has the kernel thread update the kernel sets in one transaction.
pub fn start(source: &DaemonConfig, kernel: &Sender<KernelCmd>) -> PendingReload {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let source = source.clone();
    let kernel = kernel.clone();
    let work = move || -> std::result::Result<Arc<Config>, String> {
        let cfg = source.load().map_err(|e| format!("{e:#}"))?;
        let (done, result) = crossbeam_channel::bounded(1);
        kernel
            .send(KernelCmd::Update(Arc::clone(&cfg), done))
            .map_err(|_| "the kernel thread has stopped".to_owned())?;
        result
            .recv()
            .map_err(|_| "the kernel thread has stopped".to_owned())?
            .map_err(|e| format!("updating kernel rules: {e:#}"))?;
        Ok(cfg)
    };
    let spawned = std::thread::Builder::new()
        .name("portcullis-reload".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let _ = tx.send(work());
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(Err(format!("starting the reload thread: {e}")));
    }
    rx
}

/// Second half, on the packet thread: the engine takes the new config
/// (bans survive). A `reload` event says what happened; on an error
/// before the kernel update the old rules stay in force.
pub fn finish(outcome: std::result::Result<Arc<Config>, String>, engine: &mut Engine) -> Event {
    let outcome = outcome.and_then(|cfg| {
        engine.reload(cfg).map_err(|e| {
            format!("the kernel has the new lists, but the scan detector did not restart: {e}")
        })
    });
    let ev = Event::new(
        now(),
        Body::Reload(ReloadEvent {
            reload: ReloadInfo {
                error: outcome.as_ref().err().cloned(),
            },
        }),
    );
    match outcome {
        Ok(()) => log::info!("configuration reloaded"),
        Err(e) => log::error!("reload failed: {e}"),
    }
    ev
}
