//! Knowledge distillation through the command line (`fmnist train --teacher RUN`, the
//! `[distill]` table): a teacher with no share of the loss changes nothing, a student that learns
//! only from its teacher agrees with it more than one taught by the labels, and a teacher that is
//! not a finished run is refused before anything is written; in a study, a run names another run
//! of the study as its teacher, which is trained first.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

fn fmnist(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["--threads", "2"])
        .args(args)
        .env_remove("FMNIST_DATA")
        .output()
        .expect("fmnist runs")
}

fn succeeds(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Trains into `runs/name` with `recipe`: flags naming a preset or a file, then overrides.
fn train(runs: &Path, name: &str, recipe: &[&str]) -> PathBuf {
    let data = common::real_data_dir();
    let mut args = vec!["train", "--quiet", "--name", name];
    args.extend(["--runs-dir", runs.to_str().unwrap()]);
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend(recipe);
    succeeds(fmnist(&args));
    runs.join(name)
}

/// The predicted class of every test image, from `fmnist eval --logits`.
fn predictions(run: &Path) -> Vec<usize> {
    let file = run.join("logits.npy");
    let data = common::real_data_dir();
    succeeds(fmnist(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--logits",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    let bytes = std::fs::read(&file).unwrap();
    let header = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let values: Vec<f32> = bytes[10 + header..]
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    values
        .chunks(10)
        .map(|row| (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap())
        .collect()
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// A configuration file: the study's MLP recipe (the defaults) for 2 epochs with `distill`.
fn distill_config(dir: &Path, name: &str, distill: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("epochs = 2\n[distill]\n{distill}\n")).unwrap();
    path
}

#[test]
fn a_teacher_with_no_share_of_the_loss_changes_nothing() {
    let dir = TempDir::new("distill-zero");
    let runs = dir.path().join("runs");
    let teacher = train(&runs, "teacher", &["--preset", "seed-mlp", "--epochs", "1"]);
    let zero = distill_config(
        dir.path(),
        "zero",
        &format!("teacher = {:?}\nweight = 0.0", teacher.to_str().unwrap()),
    );
    let student = train(&runs, "student", &["--config", zero.to_str().unwrap()]);
    let plain = train(&runs, "plain", &["--preset", "seed-mlp", "--epochs", "2"]);
    let read = |run: &Path| fmnist::training::History::read(run).unwrap();
    let (student, plain) = (read(&student), read(&plain));
    for (s, p) in student.epochs.iter().zip(&plain.epochs) {
        assert_eq!(s.val_loss, p.val_loss, "epoch {}", s.epoch);
        assert_eq!(s.loss, p.loss, "epoch {}", s.epoch);
    }
    assert_eq!(student.epochs.len(), 2);
}

#[test]
fn a_student_taught_by_its_teacher_alone_agrees_with_it_more() {
    let dir = TempDir::new("distill-agree");
    let runs = dir.path().join("runs");
    let teacher = train(&runs, "teacher", &["--preset", "seed-mlp", "--epochs", "3"]);
    let only_teacher = distill_config(
        dir.path(),
        "only",
        &format!(
            "teacher = {:?}\nweight = 1.0\ntemperature = 1.0",
            teacher.to_str().unwrap()
        ),
    );
    let linear = ["--model", "linear", "--epochs", "3"];
    let mut taught = vec!["--config", only_teacher.to_str().unwrap()];
    taught.extend(linear);
    let student = train(&runs, "student", &taught);
    let mut labelled = vec!["--preset", "seed-mlp"];
    labelled.extend(linear);
    let plain = train(&runs, "plain", &labelled);
    let config = std::fs::read_to_string(student.join("config.toml")).unwrap();
    assert!(config.contains("[distill]"), "{config}");
    let teacher_says = predictions(&teacher);
    let (with, without) = (
        agreement(&predictions(&student), &teacher_says),
        agreement(&predictions(&plain), &teacher_says),
    );
    assert!(
        with > without + AGREEMENT_GAIN,
        "agreement with the teacher: {with:.4} taught by it, {without:.4} by the labels"
    );
}

/// How much more often (as a fraction of the test set) the student taught by the teacher alone
/// must predict the teacher's class than the one taught by the labels: measured 0.9314 against
/// 0.9165 (AMD Zen 5, 2 threads); the same recipe without a teacher would give the same figure
/// twice.
const AGREEMENT_GAIN: f64 = 0.005;

#[test]
fn a_teacher_that_is_not_a_finished_run_is_refused_before_anything_is_written() {
    let dir = TempDir::new("distill-refused");
    let runs = dir.path().join("runs");
    let data = common::real_data_dir();
    let with_teacher = |teacher: &Path| {
        fmnist(&[
            "train",
            "--name",
            "student",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--teacher",
            teacher.to_str().unwrap(),
        ])
    };
    let missing = dir.path().join("no-such-run");
    common::refused(
        with_teacher(&missing),
        "distill.teacher: not a run directory",
    );
    assert!(!runs.join("student").exists());
    // A run directory without a result: stopped before its end.
    let unfinished = dir.path().join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("config.toml"), "epochs = 1\n").unwrap();
    common::refused(with_teacher(&unfinished), "has not finished");
    assert!(!runs.join("student").exists());
    let bad = distill_config(dir.path(), "bad", "teacher = \"x\"\nweight = 1.5");
    let out = fmnist(&["train", "--config", bad.to_str().unwrap()]);
    common::refused(out, "distill.weight = 1.5");
}

/// A student listed before its teacher, and a group of its own: `--group students` takes the
/// teacher along.
const STUDY_WITH_TEACHER: &str = r#"
[[group]]
name = "students"
[[group.run]]
name = "student"
model = "linear"
hidden = []
epochs = 2
teacher = "teacher"

[[group]]
name = "teachers"
[[group.run]]
name = "teacher"
epochs = 1
[[group.run]]
name = "not-needed"
epochs = 1
hidden = [30]
"#;

fn study(file: &Path, out: &Path, extra: &[&str]) -> Output {
    let data = common::real_data_dir();
    let mut args = vec!["study", "--quiet", "--workers", "1", file.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(["--data-dir", data.to_str().unwrap()]);
    args.extend(extra);
    fmnist(&args)
}

#[test]
fn a_study_run_learns_from_another_run_of_the_study_trained_first() {
    let dir = TempDir::new("distill-study");
    let file = dir.path().join("kd.toml");
    std::fs::write(&file, STUDY_WITH_TEACHER).unwrap();
    let out = dir.path().join("out");
    succeeds(study(&file, &out, &["--group", "students"]));
    let runs = out.join("runs");
    assert!(runs.join("teacher").join("result.json").is_file());
    assert!(
        !runs.join("not-needed").exists(),
        "only the teacher was taken along"
    );
    // The same student trained alone from the study's teacher: the same history, to the digit.
    let alone = train(
        &dir.path().join("alone"),
        "student",
        &[
            "--model",
            "linear",
            "--epochs",
            "2",
            "--teacher",
            runs.join("teacher").to_str().unwrap(),
        ],
    );
    let read = |run: &Path| fmnist::training::History::read(run).unwrap();
    let (in_study, alone) = (read(&runs.join("student")), read(&alone));
    assert_eq!(in_study.epochs.len(), 2);
    for (s, a) in in_study.epochs.iter().zip(&alone.epochs) {
        assert_eq!(s.val_loss, a.val_loss, "epoch {}", s.epoch);
    }
    // Without the teacher, the student learns from the labels: another history.
    let plain = train(
        &dir.path().join("alone"),
        "plain",
        &["--model", "linear", "--epochs", "2"],
    );
    assert_ne!(read(&plain).epochs[1].val_loss, in_study.epochs[1].val_loss);
    // The student's configuration names its teacher as the study does, and resumes from there.
    let config = std::fs::read_to_string(runs.join("student").join("config.toml")).unwrap();
    assert!(config.contains("teacher = \"teacher\""), "{config}");
}

#[test]
fn a_study_whose_teachers_cannot_be_trained_is_refused_whole() {
    let dir = TempDir::new("distill-study-refused");
    let out = dir.path().join("out");
    let refused = |name: &str, text: &str, needle: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let result = study(&file, &out, &[]);
        let err = String::from_utf8_lossy(&result.stderr).into_owned();
        assert_eq!(result.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(!out.join("runs").exists(), "nothing trained: {err}");
    };
    let run = |name: &str, teacher: &str| {
        format!("[[group.run]]\nname = {name:?}\nepochs = 1\nteacher = {teacher:?}\n")
    };
    let group = "[[group]]\nname = \"g\"\n";
    refused(
        "missing.toml",
        &format!("{group}{}", run("a", "no-such-run")),
        "run \"a\": distill.teacher = \"no-such-run\" names neither a run of this study nor",
    );
    refused(
        "itself.toml",
        &format!("{group}{}", run("a", "a")),
        "run \"a\": distill.teacher names the run itself",
    );
    refused(
        "cycle.toml",
        &format!("{group}{}{}", run("a", "b"), run("b", "a")),
        "run \"a\": its teachers form a cycle (a -> b)",
    );
}
