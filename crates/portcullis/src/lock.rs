//! One daemon with kernel rules per network namespace: the lock that `run`
//! holds while its rules are in place and `cleanup` takes before it
//! removes leftovers.

use anyhow::{Context, Result};

/// Where the lock that makes one daemon per network namespace lives.
pub const LOCK_DIR: &str = "/run/portcullis";

/// Holds the kernel-rules lock of this network namespace: one daemon with
/// kernel rules per namespace, whatever `--socket` each was given (another
/// one's install would delete our table as a crash's leftovers, and its
/// teardown ours). Released when dropped (or when the process dies).
pub fn lock_namespace() -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let ns = std::fs::metadata("/proc/self/ns/net")
        .context("reading this process's network namespace")?
        .ino();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(LOCK_DIR)
        .with_context(|| format!("creating {LOCK_DIR}"))?;
    let path = format!("{LOCK_DIR}/netns-{ns}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another portcullis daemon manages this network namespace's kernel rules (lock {path}: {e}); stop it first"
        )
    })
}
