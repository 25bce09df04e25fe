//! The study report: per group a table (run, parameters, best epoch, lowest test loss, accuracy
//! at the best epoch and at the end, final train/test gap, seconds per epoch), the figure, and a
//! short reading generated from the numbers ([`analysis`]) and the best run's confusion matrix
//! and misclassified images ([`plots`]); written as `report.md`, `report.json` and as one
//! self-contained `report.html` that opens from disk.

pub mod analysis;
pub mod plots;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::error::Result;
use crate::fsio;
use crate::study::Study;
use crate::study::runner::CompletedRun;
use analysis::{analyse, compare, reading};
use plots::Series;

/// One row of a group's table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub run: String,
    pub parameters: String,
    pub best_epoch: usize,
    pub lowest_test_loss: f64,
    pub test_acc_at_best: f64,
    pub final_test_acc: f64,
    pub final_gap: f64,
    pub seconds_per_epoch: f64,
    pub epochs: usize,
    pub reading: String,
}

/// A group as the report shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupReport {
    pub name: String,
    pub title: String,
    pub description: String,
    pub rows: Vec<Row>,
    pub comparison: String,
    /// The figure, relative to the report's directory.
    pub figure_png: String,
    pub figure_svg: String,
    /// The group's most accurate run evaluated in detail, when the data was at hand.
    pub best_run: Option<BestRun>,
    pub summary: GroupSummary,
}

/// A group in one line of the report's summary: its runs' final test accuracy as mean and
/// spread (seeds of one recipe, or the settings a group compares), beside a published result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupSummary {
    pub runs: usize,
    /// The model's parameters (the largest, when the runs' models differ).
    pub parameters: usize,
    pub accuracy_mean: f64,
    /// Sample standard deviation; 0 for one run.
    pub accuracy_sd: f64,
    pub accuracy_min: f64,
    pub accuracy_max: f64,
    /// Mean wall time of training one run, evaluation included.
    pub seconds_mean: f64,
    pub reference: String,
}

/// The summary line of a group's complete runs (time last, as it is the one cell that differs
/// between two trainings of the same runs).
pub fn summarise(runs: &[CompletedRun], reference: &str) -> GroupSummary {
    let accuracies: Vec<f64> = runs.iter().map(|r| r.result.test_acc).collect();
    let n = accuracies.len().max(1) as f64;
    let mean = accuracies.iter().sum::<f64>() / n;
    let sd = if accuracies.len() > 1 {
        (accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    GroupSummary {
        runs: runs.len(),
        parameters: runs.iter().map(|r| r.result.parameters).max().unwrap_or(0),
        accuracy_mean: mean,
        accuracy_sd: sd,
        accuracy_min: accuracies.iter().copied().fold(f64::INFINITY, f64::min),
        accuracy_max: accuracies.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        seconds_mean: runs.iter().map(|r| r.result.total_seconds).sum::<f64>() / n,
        reference: reference.to_string(),
    }
}

const SUMMARY_HEADER: [&str; 6] = [
    "group",
    "runs",
    "parameters",
    "final test acc, mean (sd) [min-max]",
    "published",
    "time per run",
];

fn summary_cells(g: &GroupReport) -> [String; 6] {
    let s = &g.summary;
    [
        g.title.clone(),
        s.runs.to_string(),
        s.parameters.to_string(),
        if s.runs > 1 {
            format!(
                "{:.2}% ({:.2}) [{:.2}-{:.2}]",
                s.accuracy_mean * 100.0,
                s.accuracy_sd * 100.0,
                s.accuracy_min * 100.0,
                s.accuracy_max * 100.0
            )
        } else {
            format!("{:.2}%", s.accuracy_mean * 100.0)
        },
        s.reference.clone(),
        if s.seconds_mean >= 120.0 {
            format!("{:.1} min", s.seconds_mean / 60.0)
        } else {
            format!("{:.1} s", s.seconds_mean)
        },
    ]
}

/// Per-class accuracy, confusion matrix and misclassified images of a group's best run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BestRun {
    pub run: String,
    pub accuracy: f64,
    pub per_class: Vec<crate::evaluation::ClassScore>,
    pub confusion_png: String,
    pub misclassified_png: String,
}

/// Evaluates the group's run with the highest final test accuracy and draws its pictures.
fn best_run(
    group: &str,
    runs: &[CompletedRun],
    data: &crate::data::FashionMnist,
    device: &burn::prelude::Device,
    plots_dir: &Path,
) -> Result<Option<BestRun>> {
    let Some(best) = runs
        .iter()
        .max_by(|a, b| a.result.test_acc.total_cmp(&b.result.test_acc))
    else {
        return Ok(None);
    };
    let weights = best.result.final_weights;
    let predictor =
        crate::inference::Predictor::load(&best.dir, weights, Some(&data.train), device)?;
    let scores = predictor.evaluate(&data.test);
    let dir = plots_dir.join(format!("{group}-best"));
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    crate::evaluation::write_pictures(&scores, &data.test, &best.planned.name, &dir, 32)?;
    Ok(Some(BestRun {
        run: best.planned.name.clone(),
        accuracy: scores.accuracy,
        per_class: scores.per_class(),
        confusion_png: format!("plots/{group}-best/confusion.png"),
        misclassified_png: format!("plots/{group}-best/misclassified.png"),
    }))
}

/// Builds the rows of a group.
pub fn rows(runs: &[CompletedRun]) -> Vec<Row> {
    runs.iter()
        .filter_map(|r| {
            let a = analyse(&r.history)?;
            Some(Row {
                run: r.planned.name.clone(),
                parameters: r
                    .planned
                    .settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                best_epoch: a.best_epoch,
                lowest_test_loss: a.best_val_loss,
                test_acc_at_best: a.best_val_acc,
                final_test_acc: r.result.test_acc,
                final_gap: a.final_gap,
                seconds_per_epoch: a.seconds_per_epoch,
                epochs: a.last_epoch,
                reading: reading(&r.history),
            })
        })
        .collect()
}

/// Draws the figures and writes `report.md`, `report.html` and `report.json` into `out_dir`.
/// With the data at hand (`evaluate`), each group's best run is evaluated in detail too.
/// Returns the path of the HTML report.
pub fn write_study_report(
    out_dir: &Path,
    study: &Study,
    groups: &[Vec<CompletedRun>],
    evaluate: Option<(&crate::data::FashionMnist, &burn::prelude::Device)>,
) -> Result<PathBuf> {
    let plots_dir = out_dir.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| crate::Error::io(&plots_dir, e))?;
    let mut reports = Vec::new();
    for (group, runs) in study.groups.iter().zip(groups) {
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: &r.planned.name,
                history: &r.history,
            })
            .collect();
        plots::write_figure(&series, &group.title, &plots_dir.join(&group.name))?;
        let pairs: Vec<(&str, &crate::training::History, f64)> = runs
            .iter()
            .map(|r| (r.planned.name.as_str(), &r.history, r.result.test_acc))
            .collect();
        reports.push(GroupReport {
            name: group.name.clone(),
            title: group.title.clone(),
            description: group.description.clone(),
            rows: rows(runs),
            comparison: compare(&pairs),
            figure_png: format!("plots/{}.png", group.name),
            figure_svg: format!("plots/{}.svg", group.name),
            best_run: match evaluate {
                Some((data, device)) => best_run(&group.name, runs, data, device, &plots_dir)?,
                None => None,
            },
            summary: summarise(runs, &group.reference),
        });
    }
    fsio::write_text(&out_dir.join("report.md"), &markdown(study, &reports))?;
    let html = html(study, &reports, out_dir)?;
    let html_path = out_dir.join("report.html");
    fsio::write_text(&html_path, &html)?;
    fsio::write_json(&out_dir.join("report.json"), &reports)?;
    Ok(html_path)
}

const HEADER: [&str; 8] = [
    "run",
    "parameters",
    "best epoch",
    "lowest test loss",
    "test acc at best",
    "final test acc",
    "final gap",
    "s/epoch",
];

fn cells(r: &Row) -> [String; 8] {
    [
        r.run.clone(),
        r.parameters.clone(),
        format!("{}/{}", r.best_epoch, r.epochs),
        format!("{:.4}", r.lowest_test_loss),
        format!("{:.4}", r.test_acc_at_best),
        format!("{:.4}", r.final_test_acc),
        format!("{:.3}", r.final_gap),
        format!("{:.3}", r.seconds_per_epoch),
    ]
}

/// The Markdown report.
pub fn markdown(study: &Study, groups: &[GroupReport]) -> String {
    let mut out = format!("# {}\n\n", study.title);
    if !study.description.is_empty() {
        let _ = writeln!(out, "{}\n", study.description.trim());
    }
    let _ = writeln!(
        out,
        "Study file: `{}`. Loss is cross-entropy; accuracies and losses are on the validation data \
         (the test set unless a run holds out part of the training set). The gap is test loss minus \
         train loss at the last epoch.\n",
        study.source.display()
    );
    let _ = writeln!(out, "| {} |", SUMMARY_HEADER.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(SUMMARY_HEADER.len()));
    for g in groups {
        let _ = writeln!(
            out,
            "| {} |",
            summary_cells(g).join(" | ").replace('\n', " ")
        );
    }
    out.push('\n');
    for g in groups {
        let _ = writeln!(out, "## {}\n", g.title);
        if !g.description.is_empty() {
            let _ = writeln!(out, "{}\n", g.description.trim());
        }
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(HEADER.len()));
        for r in &g.rows {
            let _ = writeln!(out, "| {} |", cells(r).join(" | ").replace('\n', " "));
        }
        let _ = writeln!(out, "\n![{}]({})\n", g.title, g.figure_png);
        if !g.comparison.is_empty() {
            let _ = writeln!(out, "{}\n", g.comparison);
        }
        for r in &g.rows {
            let _ = writeln!(out, "- **{}**: {}", r.run, r.reading);
        }
        out.push('\n');
        if let Some(b) = &g.best_run {
            let _ = writeln!(
                out,
                "Best run **{}** (test accuracy {:.4}), per class:\n",
                b.run, b.accuracy
            );
            let _ = writeln!(out, "| class | accuracy |\n| --- | --- |");
            for c in &b.per_class {
                let _ = writeln!(out, "| {} | {:.3} |", c.name, c.accuracy);
            }
            let _ = writeln!(
                out,
                "\n![confusion matrix]({})\n\n![misclassified]({})\n",
                b.confusion_png, b.misclassified_png
            );
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML report: figures embedded as data URIs.
pub fn html(study: &Study, groups: &[GroupReport], out_dir: &Path) -> Result<String> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}\n\
         th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }}\n\
         th {{ background: #eef; }} td:nth-child(1), td:nth-child(2) {{ text-align: left; }}\n\
         img {{ max-width: 100%; border: 1px solid #ddd; }}\n\
         .reading {{ color: #333; }} .note {{ color: #555; font-size: 0.9em; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&study.title),
        escape(&study.title)
    );
    if !study.description.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape(study.description.trim()));
    }
    let _ = writeln!(
        out,
        "<p class=\"note\">Study file: <code>{}</code>. Loss is cross-entropy; accuracies and losses are \
         on the validation data (the test set unless a run holds out part of the training set). The gap \
         is test loss minus train loss at the last epoch. Figures: solid lines test, dashed lines train.</p>",
        escape(&study.source.display().to_string())
    );
    out.push_str("<table class=\"summary\">\n<tr>");
    for h in SUMMARY_HEADER {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for g in groups {
        let cells = summary_cells(g);
        let _ = write!(
            out,
            "<tr><td><a href=\"#{}\">{}</a></td>",
            escape(&g.name),
            escape(&cells[0])
        );
        for c in &cells[1..] {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for g in groups {
        html_group(&mut out, g, out_dir)?;
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

/// A figure file of the report as an `<img>` with its bytes inline.
fn embedded_png(out: &mut String, alt: &str, path: &Path) -> Result<()> {
    let png = fsio::read(path)?;
    let _ = writeln!(
        out,
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    Ok(())
}

/// One group: its title, table, figure, readings and best run.
fn html_group(out: &mut String, g: &GroupReport, out_dir: &Path) -> Result<()> {
    let _ = writeln!(
        out,
        "<h2 id=\"{}\">{}</h2>",
        escape(&g.name),
        escape(&g.title)
    );
    if !g.description.is_empty() {
        let _ = writeln!(out, "<p>{}</p>", escape(g.description.trim()));
    }
    out.push_str("<table>\n<tr>");
    for h in HEADER {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>\n");
    for r in &g.rows {
        out.push_str("<tr>");
        for c in cells(r) {
            let _ = write!(out, "<td>{}</td>", escape(&c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    embedded_png(out, &g.title, &out_dir.join(&g.figure_png))?;
    if !g.comparison.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"reading\"><strong>{}</strong></p>",
            escape(&g.comparison)
        );
    }
    out.push_str("<ul>\n");
    for r in &g.rows {
        let _ = writeln!(
            out,
            "<li><strong>{}</strong>: {}</li>",
            escape(&r.run),
            escape(&r.reading)
        );
    }
    out.push_str("</ul>\n");
    if let Some(b) = &g.best_run {
        html_best_run(out, b, out_dir)?;
    }
    Ok(())
}

/// The group's most accurate run: per-class accuracy, confusion matrix, misclassified images.
fn html_best_run(out: &mut String, b: &BestRun, out_dir: &Path) -> Result<()> {
    let _ = writeln!(
        out,
        "<h3>Best run: {} (test accuracy {:.4})</h3>\n<table>\n<tr><th>class</th><th>accuracy</th></tr>",
        escape(&b.run),
        b.accuracy
    );
    for c in &b.per_class {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{:.3}</td></tr>",
            escape(c.name),
            c.accuracy
        );
    }
    out.push_str("</table>\n");
    embedded_png(out, "confusion matrix", &out_dir.join(&b.confusion_png))?;
    embedded_png(
        out,
        "misclassified test images",
        &out_dir.join(&b.misclassified_png),
    )
}
