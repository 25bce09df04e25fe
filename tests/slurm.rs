//! A study on a real Slurm cluster: `deploy/slurm/submit.sh` submits an array job of 4 workers
//! and the report job after it; the report must match a serial run of the same study. Needs a
//! running cluster (`.ci/slurm-up` starts a one-node one, as root); skipped without one, except
//! under `CI=true`. The Kubernetes manifests are checked here too, by parsing them.

mod common;

use std::process::Command;

use common::TempDir;

const STUDY: &str = r#"
title = "Slurm"
[defaults]
preset = "seed-mlp"
epochs = 3
[[group]]
name = "acts"
[[group.run]]
name = "mlp"
activation = ["relu", "tanh", "elu", "sigmoid", "selu"]
"#;

fn cluster_answers() -> bool {
    common::on_path("sbatch").is_some()
        && Command::new("sinfo")
            .arg("--noheader")
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

#[test]
fn a_slurm_array_of_workers_and_a_report_job_match_a_serial_run() {
    let fix = "a Slurm cluster: apt-get install slurm-wlm munge, then .ci/slurm-up as root";
    if !common::require("a running Slurm cluster", cluster_answers(), fix) {
        return;
    }
    let dir = TempDir::new("slurm");
    let file = dir.path().join("slurm.toml");
    std::fs::write(&file, STUDY).unwrap();
    let data = common::real_data_dir();
    let serial = dir.path().join("serial");
    let out = Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["--threads", "1", "study"])
        .arg(&file)
        .arg("--out")
        .arg(&serial)
        .args(["--quiet", "--workers", "1"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cluster = dir.path().join("cluster");
    let submit = common::project_dir().join("deploy/slurm/submit.sh");
    let out = Command::new("bash")
        .arg(&submit)
        .arg(&file)
        .arg(&cluster)
        .args(["4", "--wait", "--time=10"])
        .env("FMNIST", env!("CARGO_BIN_EXE_fmnist"))
        .env("FMNIST_DATA", &data)
        .output()
        .unwrap();
    let logs = std::fs::read_dir(&cluster)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".out"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "sbatch: {}{}\njob logs:\n{logs}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        common::report_rows(&cluster),
        common::report_rows(&serial),
        "job logs:\n{logs}"
    );
    // Every run trained once, by one of the array's tasks.
    for activation in ["relu", "tanh", "elu", "sigmoid", "selu"] {
        let workers = cluster.join(format!("runs/mlp-{activation}/workers.json"));
        let text = std::fs::read_to_string(&workers).unwrap();
        let starts: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(starts.as_array().map(Vec::len), Some(1), "{text}");
    }
}

/// The shipped manifests: an Indexed Job of workers whose shard count is its completions, on a
/// shared volume, and a report Job on the same volume and study file.
#[test]
fn kubernetes_manifests_describe_indexed_workers_and_a_report() {
    let dir = common::project_dir().join("deploy/k8s");
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .collect::<Vec<serde_yaml::Value>>()
    };
    let study = read("study.yaml");
    let kind = |d: &serde_yaml::Value| d["kind"].as_str().unwrap_or_default().to_string();
    let claim = study
        .iter()
        .find(|d| kind(d) == "PersistentVolumeClaim")
        .unwrap();
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteMany");
    let job = study.iter().find(|d| kind(d) == "Job").unwrap();
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    assert_eq!(spec["parallelism"].as_u64(), Some(completions));
    let args = |job: &serde_yaml::Value| -> Vec<String> {
        job["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    let worker = args(job);
    let after = |flag: &str, args: &[String]| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(after("--shard", &worker), "auto");
    assert_eq!(after("--shard-count", &worker), completions.to_string());
    let report = read("report.yaml");
    let report_args = args(&report[0]);
    assert!(report_args.contains(&"--report-only".to_string()));
    assert_eq!(after("--out", &report_args), after("--out", &worker));
    assert_eq!(after("study", &report_args), after("study", &worker));
    let claim_name = |job: &serde_yaml::Value| {
        job["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|v| {
                v["persistentVolumeClaim"]["claimName"]
                    .as_str()
                    .map(str::to_string)
            })
    };
    assert_eq!(
        claim_name(job),
        claim["metadata"]["name"].as_str().map(str::to_string)
    );
    assert_eq!(claim_name(&report[0]), claim_name(job));
}
