//! Claims on a study's runs, so that any number of workers, on one machine or many sharing the
//! study directory, train each run once.
//!
//! A worker claims a run by creating `claims/<run>.lease` with a hard link from a file of its own
//! (`link` is atomic on a local disk and on NFS: exactly one of several workers succeeds). While
//! it trains it keeps the lease alive by touching it (the file's modification time is the
//! heartbeat). When the run is complete it writes `claims/<run>@<recipe hash>.done` (atomically)
//! and removes the lease. A lease whose heartbeat is older than the timeout is
//! stale: its worker died or hangs. Another worker breaks it by renaming it away (one rename of
//! a file succeeds, so one breaker wins), claims the run and resumes it from its checkpoint.
//!
//! Listing the state of a study reads the `claims/` directory once and opens only the leases
//! (the done markers say everything in their names), so it stays fast with thousands of runs,
//! on NFS too; a claim is a constant number of file operations.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsio;

/// Who holds a lease: written into the lease file when it is claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `host:pid:nonce`, unique to one worker process.
    pub worker: String,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when the lease was taken.
    pub since: u64,
}

impl Holder {
    /// This process, as a worker.
    pub fn this_process() -> Self {
        let host = host_name();
        let pid = std::process::id();
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Holder {
            worker: format!("{host}:{pid}:{nonce:08x}"),
            host,
            pid,
            since: unix_now(),
        }
    }
}

/// A run's state in the claims directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No lease, not done.
    Pending,
    /// Leased, with the holder and the age of its last heartbeat.
    Leased {
        holder: Option<Holder>,
        heartbeat_age: Duration,
    },
    /// Complete, for these recipe hashes (more than one when the study's recipe for the run
    /// changed and it was trained again).
    Done { recipes: Vec<String> },
}

/// The claims directory of a study.
#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
    /// A heartbeat older than this makes a lease stale.
    pub timeout: Duration,
}

impl Claims {
    /// The claims of the study in `out_dir` (`out_dir/claims`, made if missing).
    pub fn open(out_dir: &Path, timeout: Duration) -> Result<Self> {
        let dir = out_dir.join("claims");
        fs::create_dir_all(&dir).map_err(|e| unwritable(&dir, e))?;
        Ok(Claims { dir, timeout })
    }

    fn lease_path(&self, run: &str) -> PathBuf {
        self.dir.join(format!("{run}.lease"))
    }

    /// Run names are plain names (no `@`), so the marker's name splits back into both parts.
    fn done_path(&self, run: &str, recipe: &str) -> PathBuf {
        self.dir.join(format!("{run}@{recipe}.done"))
    }

    /// Every run's state, from one listing of the directory: runs not named are pending.
    pub fn list(&self) -> Result<HashMap<String, Claim>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut state = HashMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((run, recipe)) = name.strip_suffix(".done").and_then(|n| n.rsplit_once('@'))
            {
                let done = state
                    .entry(run.to_string())
                    .or_insert(Claim::Done { recipes: vec![] });
                match done {
                    Claim::Done { recipes } => recipes.push(recipe.to_string()),
                    other => {
                        *other = Claim::Done {
                            recipes: vec![recipe.to_string()],
                        }
                    }
                }
            } else if let Some(run) = name.strip_suffix(".lease")
                && !state.contains_key(run)
            {
                state.insert(run.to_string(), self.read_lease(&entry.path()));
            }
        }
        Ok(state)
    }

    /// A lease's holder and heartbeat; a damaged lease has no holder and its file's age.
    fn read_lease(&self, path: &Path) -> Claim {
        let age = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let holder = fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        Claim::Leased {
            holder,
            heartbeat_age: age,
        }
    }

    /// Whether `claim` is a lease whose heartbeat stopped.
    pub fn is_stale(&self, claim: &Claim) -> bool {
        matches!(claim, Claim::Leased { heartbeat_age, .. } if *heartbeat_age > self.timeout)
    }

    /// Tries to take the lease on `run`: true if this worker now holds it.
    pub fn claim(&self, run: &str, holder: &Holder) -> Result<bool> {
        let mine = self
            .dir
            .join(format!(".claim-{}-{run}", holder.worker.replace(':', "-")));
        let text = serde_json::to_string(holder)
            .map_err(|e| Error::io(&mine, std::io::Error::other(e)))?;
        fsio::write_atomic(&mine, text.as_bytes())?;
        let lease = self.lease_path(run);
        let linked = match fs::hard_link(&mine, &lease) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            // NFS may lose the reply of a link that was made: the link count tells.
            Err(e) => {
                use std::os::unix::fs::MetadataExt;
                let made = fs::metadata(&mine).is_ok_and(|m| m.nlink() == 2);
                if !made {
                    let _ = fs::remove_file(&mine);
                    return Err(Error::io(&lease, e));
                }
                true
            }
        };
        let _ = fs::remove_file(&mine);
        Ok(linked)
    }

    /// Breaks the stale lease on `run` (renames it away); true if this worker broke it, false
    /// if another did first or it is no longer stale.
    pub fn break_stale(&self, run: &str, holder: &Holder) -> Result<bool> {
        let lease = self.lease_path(run);
        if !self.is_stale(&self.read_lease(&lease)) {
            return Ok(false);
        }
        let broken = self
            .dir
            .join(format!(".broken-{}-{run}", holder.worker.replace(':', "-")));
        match fs::rename(&lease, &broken) {
            Ok(()) => {
                let _ = fs::remove_file(&broken);
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&lease, e)),
        }
    }

    /// Renews the heartbeat of `holder`'s lease on `run`; false when the lease is no longer
    /// `holder`'s (broken as stale, or taken by another worker since).
    pub fn heartbeat(&self, run: &str, holder: &Holder) -> bool {
        let lease = self.lease_path(run);
        let ours = fs::read_to_string(&lease)
            .ok()
            .and_then(|text| serde_json::from_str::<Holder>(&text).ok())
            .is_some_and(|h| h.worker == holder.worker);
        ours && fs::File::options()
            .write(true)
            .open(&lease)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .is_ok()
    }

    /// Marks `run` complete for `recipe` and gives up its lease.
    pub fn complete(&self, run: &str, recipe: &str) -> Result<()> {
        fsio::write_text(&self.done_path(run, recipe), "")?;
        self.release(run);
        Ok(())
    }

    /// Forgets that `run` was complete for `recipe` (its results are gone, or are to be redone).
    pub fn forget(&self, run: &str, recipe: &str) {
        let _ = fs::remove_file(self.done_path(run, recipe));
    }

    /// Gives up the lease on `run` (after an interruption, so that another worker may go on at
    /// once).
    pub fn release(&self, run: &str) {
        let _ = fs::remove_file(self.lease_path(run));
    }
}

fn unwritable(dir: &Path, err: std::io::Error) -> Error {
    Error::Run {
        path: dir.to_path_buf(),
        reason: format!(
            "cannot write the study's claims ({err}); every worker needs write access to --out"
        ),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fmnist-claims-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn one_claim_wins_and_a_stale_lease_is_taken_over() -> Result<()> {
        let dir = temp("claim");
        let claims = Claims::open(&dir, Duration::from_millis(200))?;
        let (a, b) = (Holder::this_process(), Holder::this_process());
        assert_ne!(a.worker, b.worker);
        assert!(claims.claim("r", &a)?);
        assert!(!claims.claim("r", &b)?, "a held lease cannot be claimed");
        assert!(claims.heartbeat("r", &a));
        assert!(!claims.heartbeat("r", &b), "only the holder renews");
        assert!(!claims.break_stale("r", &b)?, "a fresh lease is not stale");
        std::thread::sleep(Duration::from_millis(300));
        let state = claims.list()?;
        assert!(claims.is_stale(&state["r"]), "{state:?}");
        assert!(claims.break_stale("r", &b)?);
        assert!(!claims.break_stale("r", &a)?, "one breaker wins");
        assert!(claims.claim("r", &b)?);
        assert!(
            !claims.heartbeat("r", &a),
            "the old holder learns it lost the lease"
        );
        claims.complete("r", "hash")?;
        assert_eq!(
            claims.list()?.get("r"),
            Some(&Claim::Done {
                recipes: vec!["hash".into()]
            })
        );
        let left: Vec<_> = fs::read_dir(dir.join("claims"))
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the done marker is left: {left:?}");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
