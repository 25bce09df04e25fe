//! `fmnist eval --run A --run B ...`: each member scored as `fmnist eval` scores it alone, and the
//! ensemble (the mean of the members' probabilities) checked against the same mean computed
//! here from each member's logits (`--logits`).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TempDir;

fn fmnist(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(args)
        .env_remove("FMNIST_DATA")
        .output()
        .expect("fmnist runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// The `[n, 10]` values of a `.npy` file written by `fmnist eval --logits`.
fn npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header..]
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
    let exp: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

#[test]
fn an_ensemble_averages_its_members_probabilities() {
    let dir = TempDir::new("ensemble");
    let data = common::real_data_dir();
    let d = data.to_str().unwrap();
    let runs: Vec<String> = [1, 2, 3]
        .iter()
        .map(|seed| {
            let name = format!("mlp-{seed}");
            let runs = dir.path().to_str().unwrap();
            let seed = seed.to_string();
            fmnist(&[
                "--threads",
                "2",
                "train",
                "--quiet",
                "--preset",
                "seed-mlp",
                "--epochs",
                "1",
                "--seed",
                &seed,
                "--runs-dir",
                runs,
                "--name",
                &name,
                "--data-dir",
                d,
            ]);
            dir.path().join(name).display().to_string()
        })
        .collect();
    let mut logits = Vec::new();
    let mut alone = Vec::new();
    for run in &runs {
        let file = format!("{run}.npy");
        let out = fmnist(&[
            "eval",
            "--run",
            run,
            "--json",
            "--logits",
            &file,
            "--data-dir",
            d,
        ]);
        alone.push(json(out)["accuracy"].as_f64().unwrap());
        logits.push(npy(Path::new(&file)));
    }
    let mut args = vec!["eval", "--json", "--data-dir", d];
    for run in &runs {
        args.extend(["--run", run.as_str()]);
    }
    let report = json(fmnist(&args));
    for (member, accuracy) in report["members"].as_array().unwrap().iter().zip(&alone) {
        assert_eq!(member["accuracy"].as_f64().unwrap(), *accuracy, "{member}");
    }
    // The mean of the members' softmax probabilities, and its accuracy, computed here.
    let test = fmnist::data::load(
        fmnist::data::files::Location {
            dir: data.clone(),
            origin: fmnist::data::files::Origin::Flag,
        },
        false,
    )
    .unwrap()
    .test;
    let mut correct = 0;
    for (i, &label) in test.labels.iter().enumerate() {
        let mut mean = [0.0f64; 10];
        for member in &logits {
            for (m, p) in mean.iter_mut().zip(softmax(&member[i * 10..i * 10 + 10])) {
                *m += p / logits.len() as f64;
            }
        }
        let best = (0..10).fold(0, |b, c| if mean[c] > mean[b] { c } else { b });
        correct += usize::from(best == label as usize);
    }
    let expected = correct as f64 / test.labels.len() as f64;
    let ensemble = report["ensemble"]["accuracy"].as_f64().unwrap();
    assert!(
        (ensemble - expected).abs() <= 2e-4,
        "{ensemble} against {expected}"
    );
    assert_eq!(report["ensemble"]["runs"], 3);
    let best_member = alone.iter().copied().fold(0.0, f64::max);
    assert!(
        ensemble > best_member - 0.01,
        "{ensemble} against members {alone:?}"
    );
}
