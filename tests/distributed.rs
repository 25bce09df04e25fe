//! One study, many workers: workers, shards and a serial run on the same study agree; workers
//! killed with SIGKILL lose nothing and train nothing twice; `--status` and `--report-only`; the
//! bad inputs. Each test drives the real binary on the real data.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// Six runs (one of them the same recipe as another, so five are trained), a few epochs each.
const STUDY: &str = r#"
title = "Workers"
[defaults]
preset = "seed-mlp"
epochs = 4
[[group]]
name = "acts"
[[group.run]]
name = "mlp"
activation = ["relu", "tanh", "elu", "sigmoid"]
[[group]]
name = "other"
[[group.run]]
name = "linear"
preset = "seed-linear"
epochs = 4
[[group.run]]
name = "same"
activation = "relu"
"#;

/// The runs that are trained (`same` reuses `mlp-relu`).
const TRAINED: [&str; 5] = ["mlp-relu", "mlp-tanh", "mlp-elu", "mlp-sigmoid", "linear"];

fn fmnist() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fmnist"));
    cmd.env_remove("FMNIST_DATA")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("JOB_COMPLETION_INDEX");
    cmd
}

/// `fmnist --threads 1 study FILE --out OUT --data-dir DATA ARGS...`
fn study(file: &Path, out: &Path, args: &[&str]) -> Command {
    let mut cmd = fmnist();
    cmd.args(["--threads", "1", "study"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .arg("--data-dir")
        .arg(common::real_data_dir())
        .args(args);
    cmd
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fmnist starts")
}

fn write_study(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("workers.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// A run's history without its timings: `epoch,lr,lr_last,loss,acc,val_loss,val_acc`.
fn metrics(out: &Path, run: &str) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("runs").join(run).join("history.csv"))
        .unwrap_or_else(|e| panic!("{run}: {e}"));
    text.lines()
        .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
        .collect()
}

/// `(epoch, batch)` of each recorded start of `run`.
fn starts(out: &Path, run: &str) -> Vec<(usize, usize, u32)> {
    let text = std::fs::read_to_string(out.join("runs").join(run).join("workers.json"))
        .unwrap_or_else(|e| panic!("{run}: {e}"));
    let starts: serde_json::Value = serde_json::from_str(&text).unwrap();
    starts
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().unwrap();
            (n("epoch") as usize, n("batch") as usize, n("pid") as u32)
        })
        .collect()
}

fn serial_reference(dir: &Path, file: &Path) -> PathBuf {
    let out = dir.join("serial");
    ok(study(file, &out, &["--quiet", "--workers", "1"])
        .output()
        .unwrap());
    out
}

fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let deadline = Instant::now() + limit;
    children
        .into_iter()
        .map(|mut child| {
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "workers did not finish in time");
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().unwrap()
        })
        .collect()
}

#[test]
fn four_workers_train_each_run_once_as_a_serial_run_does() {
    let dir = TempDir::new("workers");
    let file = write_study(dir.path(), STUDY);
    let serial = serial_reference(dir.path(), &file);
    let out = dir.path().join("parallel");
    let workers: Vec<Child> = (0..4)
        .map(|_| spawn(study(&file, &out, &["--worker", "--quiet"])))
        .collect();
    for output in wait_all(workers, Duration::from_secs(300)) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for run in TRAINED {
        assert_eq!(metrics(&out, run), metrics(&serial, run), "{run}");
        assert_eq!(starts(&out, run).len(), 1, "{run} was started once");
    }
    assert!(
        !out.join("runs/same").exists(),
        "a shared recipe is trained once"
    );
    assert_eq!(common::report_rows(&out), common::report_rows(&serial));
    let claims: Vec<String> = std::fs::read_dir(out.join("claims"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(
        claims.len(),
        TRAINED.len(),
        "one done marker per run, no lease: {claims:?}"
    );
    assert!(claims.iter().all(|c| c.ends_with(".done")), "{claims:?}");
}

/// A plain `fmnist study` starts one worker of 1 thread per core (at most one per run) and
/// writes the report itself; the runs are those a single process trains.
#[test]
fn a_plain_study_starts_one_worker_per_core() {
    let dir = TempDir::new("local-workers");
    let file = write_study(dir.path(), STUDY);
    let serial = serial_reference(dir.path(), &file);
    let out = dir.path().join("local");
    let output = ok(study(&file, &out, &["--quiet"]).output().unwrap());
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cores.min(TRAINED.len());
    if workers > 1 {
        assert!(
            text.contains(&format!("Starting {workers} workers of 1 thread(s) each")),
            "{text}"
        );
    }
    for run in TRAINED {
        assert_eq!(metrics(&out, run), metrics(&serial, run), "{run}");
        assert_eq!(starts(&out, run).len(), 1, "{run}");
    }
    assert_eq!(common::report_rows(&out), common::report_rows(&serial));
}

/// Whether a run of the study in `out` has saved a checkpoint and not yet its result.
fn some_run_in_progress(out: &Path) -> bool {
    let Ok(runs) = std::fs::read_dir(out.join("runs")) else {
        return false;
    };
    runs.flatten().any(|run| {
        run.path().join("checkpoint.ckpt").exists() && !run.path().join("result.json").exists()
    })
}

#[test]
fn workers_killed_at_random_lose_nothing_and_train_nothing_twice() {
    let dir = TempDir::new("kill-workers");
    // Longer runs, so that the kills land inside them.
    let file = write_study(dir.path(), &STUDY.replace("epochs = 4", "epochs = 12"));
    let serial = serial_reference(dir.path(), &file);
    let out = dir.path().join("killed");
    let args = ["--worker", "--quiet", "--lease-timeout", "1"];
    let mut workers: Vec<Child> = (0..4).map(|_| spawn(study(&file, &out, &args))).collect();
    let mut state = std::process::id() as u64 | 1;
    let mut random = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut killed = 0;
    while killed < 20 {
        std::thread::sleep(Duration::from_millis(150 + random(350)));
        // On a loaded machine the workers take longer to start than the pause: wait until some
        // run has saved a checkpoint, so that kills can land inside runs that have progressed.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !some_run_in_progress(&out) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let victim = random(workers.len() as u64) as usize;
        if workers[victim].try_wait().unwrap().is_some() {
            break; // the study finished before 20 kills
        }
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(workers[victim].id() as i32, libc::SIGKILL) };
        let _ = workers[victim].wait();
        killed += 1;
        workers[victim] = spawn(study(&file, &out, &args));
    }
    assert!(
        killed >= 10,
        "only {killed} kills landed before the study finished"
    );
    for output in wait_all(workers, Duration::from_secs(600)) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut resumed = 0;
    for run in TRAINED {
        assert_eq!(metrics(&out, run), metrics(&serial, run), "{run}");
        let starts = starts(&out, run);
        // Every start after the first resumed the run, from its checkpoint where it had one.
        resumed += starts[1..]
            .iter()
            .filter(|(e, b, _)| *e > 0 || *b > 0)
            .count();
        let done = std::fs::read_dir(out.join("claims"))
            .unwrap()
            .filter(|e| {
                let name = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                name.starts_with(&format!("{run}@")) && name.ends_with(".done")
            })
            .count();
        assert_eq!(done, 1, "{run} is marked done once");
    }
    assert!(
        resumed > 0,
        "no run was resumed from a checkpoint after {killed} kills"
    );
    assert_eq!(common::report_rows(&out), common::report_rows(&serial));
}

#[test]
fn shards_from_the_kubernetes_index_split_the_runs() {
    let dir = TempDir::new("shards");
    let file = write_study(dir.path(), STUDY);
    let out = dir.path().join("sharded");
    let shard = |index: &str| {
        let mut cmd = study(
            &file,
            &out,
            &["--shard", "auto", "--shard-count", "2", "--quiet"],
        );
        cmd.env("JOB_COMPLETION_INDEX", index);
        spawn(cmd)
    };
    let children = vec![shard("0"), shard("1")];
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for output in wait_all(children, Duration::from_secs(300)) {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for (i, run) in TRAINED.iter().enumerate() {
        let starts = starts(&out, run);
        assert_eq!(starts.len(), 1, "{run}");
        assert_eq!(starts[0].2, pids[i % 2], "{run} is shard {}'s", i % 2);
    }
    assert!(
        out.join("report.md").is_file(),
        "the last shard to finish writes the report"
    );
}

#[test]
fn status_and_a_partial_report_name_what_is_missing() {
    let dir = TempDir::new("status");
    let file = write_study(dir.path(), STUDY);
    let out = dir.path().join("partial");
    ok(study(&file, &out, &["--shard", "0/2", "--quiet"])
        .output()
        .unwrap());
    // A damaged lease: pending work that nobody holds properly.
    std::fs::write(out.join("claims/mlp-tanh.lease"), "not json").unwrap();
    let status = ok(study(&file, &out, &["--status", "--json"])
        .output()
        .unwrap());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let state = |run: &str| {
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == run)
            .map(|r| r["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state("mlp-relu").as_deref(), Some("done"));
    assert_eq!(state("mlp-elu").as_deref(), Some("done"));
    assert_eq!(state("mlp-tanh").as_deref(), Some("running"));
    assert_eq!(state("mlp-sigmoid").as_deref(), Some("pending"));
    assert_eq!(status["done"], 3);
    assert_eq!(status["epochs_left"], 8);
    let table = ok(study(&file, &out, &["--status"]).output().unwrap());
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains("3 done, 1 running, 0 stale, 1 pending"),
        "{table}"
    );
    assert!(
        table.contains("damaged lease file claims/mlp-tanh.lease"),
        "{table}"
    );

    let report = ok(study(&file, &out, &["--report-only"]).output().unwrap());
    let text = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(
        text.contains("Missing from the report (2 runs not complete): mlp-tanh, mlp-sigmoid"),
        "{text}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("mlp-relu") && !md.contains("mlp-sigmoid"),
        "{md}"
    );

    // The damaged lease goes stale like any other, and a worker takes the run over.
    std::thread::sleep(Duration::from_millis(1100));
    let rest = ["--worker", "--quiet", "--lease-timeout", "1"];
    ok(study(&file, &out, &rest).output().unwrap());
    let status = ok(study(&file, &out, &["--status"]).output().unwrap());
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("5 done, 0 running, 0 stale, 0 pending"),
        "{status}"
    );
}

#[test]
fn bad_shards_foreign_study_directories_and_unwritable_ones_are_refused() {
    let dir = TempDir::new("bad-workers");
    let file = write_study(dir.path(), STUDY);
    let out = dir.path().join("out");
    let run = |args: &[&str]| study(&file, &out, args).output().unwrap();
    common::refused(
        run(&["--shard", "2/2"]),
        "--shard 2/2: the index must be below the count",
    );
    common::refused(run(&["--shard", "x"]), "--shard \"x\": write I/N");
    common::refused(run(&["--shard", "auto"]), "neither SLURM_ARRAY_TASK_ID");
    let mut k8s = study(&file, &out, &["--shard", "auto"]);
    k8s.env("JOB_COMPLETION_INDEX", "0");
    common::refused(k8s.output().unwrap(), "needs --shard-count N");
    common::refused(run(&["--lease-timeout", "0"]), "--lease-timeout 0");
    common::refused(run(&["--status"]), "no such study directory");

    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("study.json"), r#"{"file":"seed.toml"}"#).unwrap();
    common::refused(
        run(&["--quiet"]),
        "was made by the study file \"seed.toml\", not \"workers.toml\"",
    );

    let mut unwritable = study(&file, Path::new("/proc/fmnist-study"), &["--quiet"]);
    let out = unwritable.output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("/proc/fmnist-study"), "{err}");
}
