//! `portcullis cleanup`: removes the kernel rules a daemon that is no
//! longer running left behind (after `kill -9`, a crash, or a package
//! removal), exactly what `portcullis run` removes on start:
//! `table inet portcullis`, and the iptables chain `PORTCULLIS` in the
//! `security` table with its jumps (both families).
//!
//! Guarantee: it never touches the rules of a running daemon. It takes the
//! same per-network-namespace lock `run` holds while its rules are in
//! place (`lock::lock_namespace`), and refuses when it cannot. Where the
//! lock folder does not exist, no daemon with kernel rules has run since
//! boot, and nothing is created.

use std::process::ExitCode;

use anyhow::{Context, Result};
use portcullis_kernel::Firewall;

use crate::lock;

pub fn run() -> Result<ExitCode> {
    let _lock = if std::path::Path::new(lock::LOCK_DIR).is_dir() {
        match lock::lock_namespace() {
            Ok(lock) => Some(lock),
            Err(e) => {
                log::error!("{e:#}; its kernel rules are left alone");
                return Ok(ExitCode::from(1));
            }
        }
    } else {
        None
    };
    let removed = Firewall::remove_leftovers().context("removing leftover kernel rules")?;
    if removed {
        log::info!(
            "removed leftover kernel rules (table inet portcullis, iptables chain PORTCULLIS)"
        );
    } else {
        log::info!("no kernel rules of ours to remove");
    }
    Ok(ExitCode::SUCCESS)
}
