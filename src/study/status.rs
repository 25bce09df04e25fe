//! `fmnist study FILE --out DIR --status`: where each run of a study stands (done, running with
//! its host, pid and heartbeat, stale, or pending), the epochs done and left, and an estimate of
//! the time left.

use std::path::Path;

use serde::Serialize;

use super::Study;
use super::claims::{Claim, Claims, unix_now};
use super::runner::{is_done, read_starts, units};
use crate::error::Result;
use crate::training::History;

/// One run's state.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub name: String,
    /// `done`, `running`, `stale` or `pending`.
    pub state: &'static str,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// Seconds since the lease was taken, and since its last heartbeat.
    pub running_for_s: Option<u64>,
    pub heartbeat_age_s: Option<f64>,
    pub epochs_done: usize,
    pub epochs: usize,
    /// How often the run was started or resumed.
    pub starts: usize,
}

/// The whole study's state.
#[derive(Debug, Clone, Serialize)]
pub struct StudyStatus {
    pub runs: Vec<RunStatus>,
    pub done: usize,
    pub running: usize,
    pub stale: usize,
    pub pending: usize,
    pub epochs_done: usize,
    pub epochs_left: usize,
    /// Seconds left at the mean epoch time seen so far, shared by the running workers.
    pub eta_s: Option<f64>,
}

/// The state of every run (one per distinct recipe) of `study` in `out_dir`.
pub fn status(study: &Study, out_dir: &Path, claims: &Claims) -> Result<StudyStatus> {
    let state = claims.list()?;
    let (mut epoch_seconds, mut timed_epochs) = (0.0, 0usize);
    let mut runs = Vec::new();
    for unit in units(study) {
        let name = unit.run.name.clone();
        let epochs = unit.run.config.epochs;
        let dir = out_dir.join("runs").join(&name);
        let claim = state.get(&name).cloned().unwrap_or(Claim::Pending);
        let done = is_done(&state, &unit);
        // Histories are read only for runs under way, so that listing stays fast.
        let history = (!done && dir.is_dir())
            .then(|| History::read(&dir).ok())
            .flatten();
        if let Some(h) = &history {
            epoch_seconds += h
                .epochs
                .iter()
                .map(|r| r.seconds + r.eval_seconds)
                .sum::<f64>();
            timed_epochs += h.epochs.len();
        }
        let mut run = RunStatus {
            name,
            state: "pending",
            host: None,
            pid: None,
            running_for_s: None,
            heartbeat_age_s: None,
            epochs_done: history.map_or(0, |h| h.epochs.len()),
            epochs,
            starts: 0,
        };
        if done {
            run.state = "done";
            run.epochs_done = epochs;
        } else if let Claim::Leased {
            holder,
            heartbeat_age,
        } = &claim
        {
            run.state = if claims.is_stale(&claim) {
                "stale"
            } else {
                "running"
            };
            run.heartbeat_age_s = Some(heartbeat_age.as_secs_f64());
            if let Some(h) = holder {
                run.host = Some(h.host.clone());
                run.pid = Some(h.pid);
                run.running_for_s = Some(unix_now().saturating_sub(h.since));
            }
        }
        if run.state != "pending" || dir.is_dir() {
            run.starts = read_starts(&dir).len();
        }
        runs.push(run);
    }
    let count = |s: &str| runs.iter().filter(|r| r.state == s).count();
    let epochs_done: usize = runs.iter().map(|r| r.epochs_done).sum();
    let epochs_left: usize = runs
        .iter()
        .map(|r| r.epochs - r.epochs_done.min(r.epochs))
        .sum();
    let running = count("running");
    let eta_s = (timed_epochs > 0)
        .then(|| epochs_left as f64 * epoch_seconds / timed_epochs as f64 / running.max(1) as f64);
    Ok(StudyStatus {
        done: count("done"),
        running,
        stale: count("stale"),
        pending: count("pending"),
        epochs_done,
        epochs_left,
        eta_s,
        runs,
    })
}

/// The status as a table, one run a line, then the totals.
pub fn table(status: &StudyStatus) -> String {
    let mut out = format!(
        "{:<28} {:<8} {:>13} {:>7} {:<24}\n",
        "run", "state", "epochs", "starts", "worker"
    );
    for r in &status.runs {
        let worker = match (&r.host, r.pid, r.heartbeat_age_s) {
            (Some(host), Some(pid), Some(age)) => format!(
                "{host} pid {pid}, {}s, beat {age:.0}s ago",
                r.running_for_s.unwrap_or(0)
            ),
            (None, _, Some(_)) => {
                format!(
                    "damaged lease file claims/{}.lease: delete it, or it is taken over when stale",
                    r.name
                )
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<28} {:<8} {:>13} {:>7} {worker}\n",
            r.name,
            r.state,
            format!("{}/{}", r.epochs_done, r.epochs),
            r.starts
        ));
    }
    let eta = status
        .eta_s
        .map_or("unknown".to_string(), |s| format!("about {s:.0}s"));
    out.push_str(&format!(
        "{} done, {} running, {} stale, {} pending; {} epochs done, {} left; time left {eta}\n",
        status.done,
        status.running,
        status.stale,
        status.pending,
        status.epochs_done,
        status.epochs_left
    ));
    out
}
