//! Bans that outlive the daemon: a small JSON file in the state folder,
//! written atomically (temporary file, then rename) after every change.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use portcullis_engine::engine::Ban;
use portcullis_engine::Timestamp;
use serde::{Deserialize, Serialize};

const FILE: &str = "bans.json";

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    bans: Vec<SavedBan>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBan {
    addr: IpAddr,
    /// Microseconds since the Unix epoch.
    since: u64,
    until: u64,
    reason: String,
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the folder (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state folder {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
                log::warn!(
                    "cannot make state folder {} private (0700): {e}",
                    dir.display()
                );
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn bans_path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The saved bans; none if there is no file. A damaged file is an error
    /// (the caller decides whether to go on without it).
    pub fn load_bans(&self) -> Result<Vec<Ban>> {
        let path = self.bans_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let saved: Saved = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged", path.display()))?;
        Ok(saved
            .bans
            .into_iter()
            .map(|b| Ban {
                addr: b.addr,
                since: Timestamp::from_micros(b.since),
                until: Timestamp::from_micros(b.until),
                reason: b.reason,
            })
            .collect())
    }

    pub fn save_bans<'a>(&self, bans: impl Iterator<Item = &'a Ban>) -> Result<()> {
        let saved = Saved {
            version: 1,
            bans: bans
                .map(|b| SavedBan {
                    addr: b.addr,
                    since: b.since.as_micros(),
                    until: b.until.as_micros(),
                    reason: b.reason.clone(),
                })
                .collect(),
        };
        let path = self.bans_path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut f, &saved)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(&dir.path().join("state")).unwrap();
        assert!(st.load_bans().unwrap().is_empty());
        let bans = [Ban {
            addr: "2001:2::66".parse().unwrap(),
            since: Timestamp::from_secs(10),
            until: Timestamp::from_secs(610),
            reason: "scan:syn".into(),
        }];
        st.save_bans(bans.iter()).unwrap();
        assert_eq!(st.load_bans().unwrap(), bans);
        std::fs::write(st.bans_path(), "{not json").unwrap();
        assert!(st.load_bans().is_err());
    }
}
