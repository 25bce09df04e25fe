//! Study files: parsing and expansion, errors that name the key and line, resuming an
//! interrupted study, and the report built from synthetic histories (opened in a real browser).

mod common;

use std::path::{Path, PathBuf};

use common::TempDir;
use fmnist::model::ActivationKind;
use fmnist::study::runner::CompletedRun;
use fmnist::study::{PlannedRun, Study};
use fmnist::training::{EpochRecord, History, RunResult};

fn parse(text: &str) -> Result<Study, fmnist::Error> {
    Study::parse(text, Path::new("s.toml"))
}

fn parse_err(text: &str) -> String {
    parse(text)
        .expect_err("the study must be refused")
        .to_string()
}

const ACTIVATIONS: &str = r#"
title = "T"
[defaults]
epochs = 7
lr = 0.01
[[group]]
name = "acts"
[group.defaults]
preset = "seed-mlp"
[[group.run]]
name = "mlp"
activation = ["elu", "relu", "selu", "tanh", "sigmoid"]
[[group.run]]
name = "wide"
hidden = [[120, 120], [30]]
model.dropout = 0.2
[[group]]
name = "lin"
[[group.run]]
preset = "seed-linear"
"#;

#[test]
fn lists_expand_into_one_run_per_value_and_defaults_apply() {
    let study = parse(ACTIVATIONS).unwrap();
    assert_eq!(study.title, "T");
    let names: Vec<&str> = study.runs().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mlp-elu",
            "mlp-relu",
            "mlp-selu",
            "mlp-tanh",
            "mlp-sigmoid",
            "wide-120-120",
            "wide-30",
            "lin"
        ]
    );
    let runs: Vec<&PlannedRun> = study.runs().collect();
    assert_eq!(runs[3].config.model.activation, ActivationKind::Tanh);
    assert_eq!(
        runs[3].varied,
        Some(("model.activation".into(), "tanh".into()))
    );
    // Study defaults override the preset; the preset fills the rest.
    assert!(
        runs.iter()
            .all(|r| r.config.epochs == 7 && r.config.optimizer.lr == 0.01)
    );
    assert_eq!(runs[0].config.schedule.hold_epochs, 30);
    assert_eq!(runs[5].config.model.hidden, vec![120, 120]);
    assert_eq!(runs[6].config.model.hidden, vec![30]);
    assert_eq!(runs[6].config.model.dropout, 0.2);
    // A run without a name takes its group's; the linear preset keeps its own schedule.
    assert_eq!(runs[7].config.model.hidden, Vec::<usize>::new());
    assert_eq!(runs[7].config.schedule.hold_epochs, 150);
    assert_eq!(study.total_epochs(), 8 * 7);
}

#[test]
fn matmul_precision_can_be_compared_from_any_preset() {
    use fmnist::training::config::MatmulPrecision;
    let study = parse(
        "title = \"P\"\n[[group]]\nname = \"g\"\n[[group.run]]\nname = \"mlp\"\npreset = \"seed-mlp\"\nmatmul_precision = [\"highest\", \"medium\"]\n",
    )
    .unwrap();
    let precisions: Vec<MatmulPrecision> =
        study.runs().map(|r| r.config.matmul_precision).collect();
    assert_eq!(
        precisions,
        [MatmulPrecision::Highest, MatmulPrecision::Medium]
    );
    let err = parse_err(
        "title = \"P\"\n[[group]]\nname = \"g\"\n[[group.run]]\nname = \"x\"\nmatmul_precision = \"low\"\n",
    );
    assert!(err.contains("matmul_precision"), "{err}");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key_and_line() {
    let msg =
        parse_err("[[group]]\nname = \"g\"\n[[group.run]]\nname = \"r\"\nactivaton = \"elu\"\n");
    assert!(msg.starts_with("s.toml:5:1:"), "{msg}");
    assert!(msg.contains("unknown key `activaton`"), "{msg}");
    let msg = parse_err("[[group]]\nname = \"g\"\n[[group.run]]\nepochs = \"ten\"\n");
    assert!(msg.starts_with("s.toml:4:1:"), "{msg}");
    assert!(
        msg.contains("`epochs` must be an integer, not a string"),
        "{msg}"
    );
    let msg = parse_err("[[group]]\nname = \"g\"\n[[group.run]]\nactivation = \"swish\"\n");
    assert!(
        msg.starts_with("s.toml:4:1:") && msg.contains("swish"),
        "{msg}"
    );
    let msg = parse_err("[[group]]\nname = \"g\"\n[[group.run]]\n[group.run.model]\nhiden = [1]\n");
    assert!(msg.contains("unknown key `model.hiden`"), "{msg}");
    let msg = parse_err("[[group]]\nname = \"g\"\n[[group.run]]\ndropout = 1.5\n");
    assert!(msg.contains("model.dropout = 1.5"), "{msg}");
    let msg = parse_err(
        "[[group]]\nname = \"g\"\n[[group.run]]\nlr = [0.1, 0.2]\ndropout = [0.1, 0.2]\n",
    );
    assert!(msg.contains("one parameter only"), "{msg}");
    let msg = parse_err("colour = 1\n[[group]]\nname = \"g\"\n[[group.run]]\n");
    assert!(
        msg.starts_with("s.toml:1:1:") && msg.contains("colour"),
        "{msg}"
    );
    let msg = parse_err(
        "[[group]]\nname = \"g\"\n[[group.run]]\nname = \"a\"\n[[group.run]]\nname = \"a\"\n",
    );
    assert!(msg.contains("two runs are named \"a\""), "{msg}");
    assert!(parse_err("title = \"x\"\n").contains("no [[group]]"));
}

#[test]
fn shipped_studies_parse() {
    for entry in std::fs::read_dir(common::project_dir().join("studies")).unwrap() {
        let path = entry.unwrap().path();
        let study = Study::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!study.groups.is_empty(), "{}", path.display());
    }
    let seed = Study::load(&common::project_dir().join("studies/seed.toml")).unwrap();
    let groups: Vec<&str> = seed.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        groups,
        ["linear", "mlp", "activations", "dropout", "remedies"]
    );
    assert_eq!(seed.groups[0].runs[0].config.epochs, 300);
    assert_eq!(seed.groups[2].runs.len(), 5);
    let lookahead = Study::load(&common::project_dir().join("studies/lookahead.toml")).unwrap();
    let runs = &lookahead.groups[0].runs;
    let steps: Vec<usize> = runs.iter().map(|r| r.config.lookahead.steps).collect();
    assert_eq!(steps, [0, 0, 0, 5, 5, 5]);
    assert_eq!(runs[4].config.seed, 2);
    // The search's chosen run is the `speedrun-2min` preset before it was cut from 26 to 24
    // epochs to fit 120 s on the slower of the project's CPUs, and before the whitened first
    // layer cut it to 18; its seeds follow at both lengths.
    let two_minutes =
        Study::load(&common::project_dir().join("studies/speedrun-2min.toml")).unwrap();
    let chosen = two_minutes.groups[1]
        .runs
        .iter()
        .find(|r| r.name == "b256-drop05")
        .unwrap();
    let mut preset = fmnist::training::TrainConfig::preset("speedrun-2min").unwrap();
    assert_eq!((preset.epochs, preset.model.whiten), (18, true));
    preset.seed = 1;
    preset.epochs = 26;
    preset.model.whiten = false;
    preset.provenance = chosen.config.provenance.clone();
    assert_eq!(chosen.config, preset);
    // The whitening study's seeds are the preset's recipe.
    let whiten = Study::load(&common::project_dir().join("studies/whiten.toml")).unwrap();
    let mut preset = fmnist::training::TrainConfig::preset("speedrun-2min").unwrap();
    for (seed, run) in (1..=3).zip(&whiten.groups[2].runs) {
        preset.seed = seed;
        preset.provenance = run.config.provenance.clone();
        assert_eq!(run.config, preset);
    }
    assert!(whiten.groups[0].runs.iter().all(|r| !r.config.model.whiten));
    for (group, epochs) in [(2, 24), (3, 26)] {
        let recipe = &two_minutes.groups[group].runs;
        let seeds: Vec<u64> = recipe.iter().map(|r| r.config.seed).collect();
        assert_eq!(seeds, [1, 2, 3]);
        assert!(recipe.iter().all(|r| r.config.epochs == epochs));
    }
    let smoothing: Vec<f64> = two_minutes.groups[5]
        .runs
        .iter()
        .map(|r| r.config.label_smoothing)
        .collect();
    assert_eq!(smoothing, [0.05, 0.05, 0.05, 0.15, 0.15, 0.15]);
    assert_eq!(
        two_minutes.groups[6].runs[0].config.model.channels,
        [32, 96]
    );
}

/// A history whose test loss bottoms out at `best` and rises after it.
fn synthetic_history(epochs: usize, best: usize, offset: f64) -> History {
    History {
        epochs: (1..=epochs)
            .map(|e| {
                let loss = 1.0 / e as f64 + offset;
                let val_loss =
                    0.4 + 0.01 * (e as f64 - best as f64).powi(2) / epochs as f64 + offset;
                EpochRecord {
                    epoch: e,
                    lr: 0.05,
                    lr_last: None,
                    loss,
                    acc: 1.0 - loss / 3.0,
                    val_loss,
                    val_acc: 1.0 - val_loss / 3.0,
                    seconds: 0.1,
                    eval_seconds: 0.01,
                    image_side: None,
                }
            })
            .collect(),
    }
}

fn completed(planned: &PlannedRun, history: History) -> CompletedRun {
    let best = history.best().unwrap().clone();
    let last = history.last().unwrap().clone();
    CompletedRun {
        planned: planned.clone(),
        dir: PathBuf::from("/nowhere"),
        result: RunResult {
            name: planned.name.clone(),
            epochs: history.epochs.len(),
            test_acc: last.val_acc,
            test_loss: last.val_loss,
            best,
            last,
            seconds_per_epoch: 0.1,
            total_seconds: 1.0,
            parameters: 51_370,
            stopped_epoch: None,
            final_weights: fmnist::training::Weights::Last,
            skipped_batches: 0,
        },
        history,
        reused: false,
    }
}

fn synthetic_report(dir: &Path) -> PathBuf {
    let study = parse(ACTIVATIONS).unwrap();
    let mut groups: Vec<Vec<CompletedRun>> = study
        .groups
        .iter()
        .map(|g| {
            g.runs
                .iter()
                .enumerate()
                .map(|(i, r)| completed(r, synthetic_history(40, 12 + 3 * i, 0.01 * i as f64)))
                .collect()
        })
        .collect();
    // mlp-elu's history ends lowest of its group, but its result scores highest, as a run's
    // test-time views can lift it above its single-view history.
    groups[0][0].result.test_acc = 0.99;
    fmnist::report::write_study_report(dir, &study, &groups, None).unwrap()
}

#[test]
fn report_from_synthetic_histories() {
    let dir = TempDir::new("report");
    let html = synthetic_report(dir.path());
    for file in [
        "report.md",
        "report.json",
        "plots/acts.png",
        "plots/acts.svg",
        "plots/lin.png",
        "plots/lin.svg",
    ] {
        let path = dir.path().join(file);
        assert!(
            path.is_file() && std::fs::metadata(&path).unwrap().len() > 1000,
            "{file}"
        );
    }
    let png = std::fs::read(dir.path().join("plots/acts.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(dir.path().join("plots/acts.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("mlp-tanh") && svg.contains("best epoch 21"),
        "svg labels"
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    // mlp-elu bottoms out at epoch 12 (hand-computed: the parabola's vertex) and rises after it.
    assert!(
        md.contains("| mlp-elu | model.activation=elu | 12/40 | 0.4000 |"),
        "{md}"
    );
    assert!(md.contains("overfitting starts around epoch 12"), "{md}");
    // The comparison names the run whose final test accuracy (its result, the table's column) is
    // highest.
    assert!(
        md.contains("Highest final test accuracy: mlp-elu (0.9900)"),
        "{md}"
    );
    // Final gap of mlp-elu: val_loss(40) - loss(40) = 0.4 + 0.01*28^2/40 - 1/40.
    let gap = 0.4 + 0.01 * 28f64.powi(2) / 40.0 - 1.0 / 40.0;
    assert!(
        md.contains(&format!("| {gap:.3} |")),
        "gap {gap:.3} in {md}"
    );
    assert!(
        md.contains("![3. Activation functions](plots/acts.png)")
            || md.contains("](plots/acts.png)")
    );
    let text = std::fs::read_to_string(&html).unwrap();
    assert_eq!(text.matches("data:image/png;base64,").count(), 2);
    assert!(text.contains("<td>mlp-sigmoid</td>"));
}

/// Opens the report in headless Chromium with a probe script appended: every image must load and
/// no error may be reported.
#[test]
fn report_opens_in_a_real_browser() {
    let chromium = common::on_path("chromium").or_else(|| common::on_path("chromium-browser"));
    let fix = "apt-get install chromium; .ci/run installs it";
    if !common::require("Chromium", chromium.is_some(), fix) {
        return;
    }
    let chromium = chromium.expect("checked above");
    let dir = TempDir::new("browser");
    let html = synthetic_report(dir.path());
    let probe = r#"<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src) || 'error')), true);
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const p = document.createElement('pre');
  p.id = 'probe';
  p.textContent = `PROBE images=${imgs.length} broken=${broken} errors=${window.__errors.length}`;
  document.body.appendChild(p);
});
</script>"#;
    let text = std::fs::read_to_string(&html)
        .unwrap()
        .replace("<head>", &format!("<head>\n{probe}"));
    let probed = dir.path().join("probed.html");
    std::fs::write(&probed, text).unwrap();
    let profile = TempDir::new("chromium-profile");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", probed.display()),
        ])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("PROBE images=2 broken=0 errors=0"),
        "probe result missing or wrong; stderr: {}\nDOM tail: {}",
        String::from_utf8_lossy(&out.stderr),
        &dom[dom.len().saturating_sub(400)..]
    );
}

fn dataset() -> fmnist::data::FashionMnist {
    fmnist::data::load(
        fmnist::data::files::Location {
            dir: common::real_data_dir(),
            origin: fmnist::data::files::Origin::Flag,
        },
        false,
    )
    .unwrap()
}

fn run_study(text: &str, out: &Path, force: bool) -> Vec<CompletedRun> {
    let study = Study::parse(text, Path::new("resume.toml")).unwrap();
    let options = fmnist::study::runner::StudyOptions {
        out_dir: out.to_path_buf(),
        force,
        quiet: true,
        provenance: Default::default(),
        train: Default::default(),
        lease_timeout: std::time::Duration::from_secs(60),
        shard: fmnist::study::runner::Shard::ALL,
    };
    let device = burn::prelude::Device::flex();
    fmnist::study::runner::run(&study, &dataset(), &device, &options)
        .unwrap()
        .groups
        .into_iter()
        .flatten()
        .collect()
}

const FIRST_PART: &str = r#"
[defaults]
epochs = 1
preset = "seed-linear"
[[group]]
name = "g"
[[group.run]]
name = "lr"
lr = [0.05, 0.02]
"#;

#[test]
fn an_interrupted_study_resumes_without_retraining_completed_runs() {
    let out = TempDir::new("resume");
    let first = run_study(FIRST_PART, out.path(), false);
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|r| !r.reused));
    let weights = out.path().join("runs/lr-0.05/model-last.bpk");
    let stamp = std::fs::metadata(&weights).unwrap().modified().unwrap();
    // The second run was interrupted: its result never written.
    std::fs::remove_file(out.path().join("runs/lr-0.02/result.json")).unwrap();
    // The study is extended with a third value and run again.
    let extended = FIRST_PART.replace("[0.05, 0.02]", "[0.05, 0.02, 0.01]");
    let second = run_study(&extended, out.path(), false);
    let reused: Vec<(&str, bool)> = second
        .iter()
        .map(|r| (r.planned.name.as_str(), r.reused))
        .collect();
    assert_eq!(
        reused,
        [("lr-0.05", true), ("lr-0.02", false), ("lr-0.01", false)]
    );
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        stamp,
        "not retrained"
    );
    assert_eq!(second[0].history, first[0].history);
    // A changed recipe under the same name is retrained, and --force retrains everything.
    let changed = extended.replace("epochs = 1", "epochs = 2");
    assert!(
        run_study(&changed, out.path(), false)
            .iter()
            .all(|r| !r.reused)
    );
    assert!(
        run_study(&changed, out.path(), false)
            .iter()
            .all(|r| r.reused)
    );
    assert!(
        run_study(&changed, out.path(), true)
            .iter()
            .all(|r| !r.reused)
    );
}

/// A study with problems in several runs, far apart: every one is reported at once, before any
/// run trains or any directory is made.
#[test]
fn every_problem_of_a_study_is_reported_before_anything_trains() {
    let dir = TempDir::new("study-problems");
    let file = dir.path().join("bad.toml");
    let mut text = String::from("[defaults]\npreset = \"seed-mlp\"\nepochs = 1\n");
    for i in 0..56 {
        text.push_str(&format!(
            "[[group]]\nname = \"g{i}\"\n[[group.run]]\nlr = 0.01\n"
        ));
    }
    text.push_str(
        "[[group]]\nname = \"late\"\n[[group.run]]\nname = \"lr\"\nlr = [0.1, -1.0]\n\
         [[group.run]]\nname = \"../../escape\"\n[[group.run]]\nname = \"act\"\nactivation = \"swish\"\n\
         [[group]]\nname = \"../plots\"\n[[group.run]]\nname = \"ok\"\n",
    );
    std::fs::write(&file, text).unwrap();
    let out_dir = dir.path().join("out");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["study", "--offline", "--data-dir", "/nonexistent"])
        .arg(&file)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: the study has 4 problems (nothing was trained)"),
        "{err}"
    );
    assert!(err.contains("run \"lr--1.0\": optimizer.lr = -1"), "{err}");
    assert!(
        err.contains("run name \"../../escape\" is not a plain name"),
        "{err}"
    );
    assert!(err.contains("swish"), "{err}");
    assert!(
        err.contains("group name \"../plots\" is not a plain name"),
        "{err}"
    );
    assert!(
        !out_dir.exists(),
        "nothing may be written for a refused study"
    );
    assert!(!dir.path().join("escape").exists());
}

/// Names from a study file or the command line never lead outside the directories given.
#[test]
fn hostile_names_are_refused_wherever_they_become_paths() {
    for name in ["../x", "a/b", "..", ".hidden", "/tmp/x", "a\\b"] {
        let run = format!("[[group]]\nname = \"g\"\n[[group.run]]\nname = {name:?}\n");
        assert!(
            parse_err(&run).contains("is not a plain name"),
            "run name {name:?}"
        );
        let group = format!("[[group]]\nname = {name:?}\n[[group.run]]\nname = \"r\"\n");
        assert!(
            parse_err(&group).contains("is not a plain name"),
            "group name {name:?}"
        );
        // A listed value becomes part of a run's name: it is checked too.
        let listed = format!(
            "[[group]]\nname = \"g\"\n[[group.run]]\nname = \"r\"\nactivation = [{name:?}]\n"
        );
        assert!(parse(&listed).is_err(), "listed value {name:?}");
    }
    let dir = TempDir::new("hostile-train");
    let runs = dir.path().join("runs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(["train", "--offline", "--name", "../outside", "--runs-dir"])
        .arg(&runs)
        .args(["--data-dir", "/nonexistent", "--epochs", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("run name \"../outside\" is not a plain name"),
        "{err}"
    );
    assert!(!dir.path().join("outside").exists());
}

const TWO_GROUPS: &str = r#"
title = "Two families"
[[group]]
name = "lin"
title = "Linear"
reference = "84.2%, logistic regression"
[[group.run]]
name = "linear"
preset = "seed-linear"
epochs = 2
seed = [1, 2]
[[group]]
name = "mlp"
title = "MLP"
[[group.run]]
name = "mlp"
preset = "seed-mlp"
epochs = 2
"#;

/// The report's summary rows (the table before the first group's section).
fn summary_rows(out: &Path) -> Vec<String> {
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let head = report.split("\n## ").next().unwrap().to_string();
    head.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| group") && !l.starts_with("| ---"))
        .map(str::to_string)
        .collect()
}

#[test]
fn one_group_of_a_study_trains_alone_and_the_summary_gives_mean_spread_and_reference() {
    let dir = TempDir::new("groups");
    let file = dir.path().join("two.toml");
    std::fs::write(&file, TWO_GROUPS).unwrap();
    let out = dir.path().join("out");
    let study = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fmnist"))
            .args(["--threads", "2", "study", "--quiet", "--workers", "1"])
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .arg("--data-dir")
            .arg(common::real_data_dir())
            .args(extra)
            .output()
            .expect("fmnist runs")
    };
    common::refused(study(&["--group", "cnn"]), "--group cnn: ");
    let first = study(&["--group", "lin"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let rows = summary_rows(&out);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("| Linear | 2 | 7850 | "), "{rows:?}");
    assert!(
        rows[0].contains("| 84.2%, logistic regression |"),
        "{rows:?}"
    );
    // Mean, sample deviation and range of the two seeds' final accuracies.
    let accs: Vec<f64> = ["linear-1", "linear-2"]
        .iter()
        .map(|run| {
            let text =
                std::fs::read_to_string(out.join("runs").join(run).join("result.json")).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["test_acc"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let mean = (accs[0] + accs[1]) / 2.0;
    let sd = (accs[0] - accs[1]).abs() / 2f64.sqrt();
    let cell = format!(
        "{:.2}% ({:.2}) [{:.2}-{:.2}]",
        mean * 100.0,
        sd * 100.0,
        accs[0].min(accs[1]) * 100.0,
        accs[0].max(accs[1]) * 100.0
    );
    assert!(rows[0].contains(&cell), "{cell} not in {rows:?}");
    assert!(!out.join("runs/mlp").exists(), "the other group trained");
    // The whole study then trains only what is missing and reports both groups.
    let whole = study(&[]);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let rows = summary_rows(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[1].starts_with("| MLP | 1 | 51370 | "), "{rows:?}");
}
