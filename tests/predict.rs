//! `fmnist predict`: pictures of any size and colour, dark-on-light or light-on-dark, and every
//! kind of unreadable file, each reported while the others are still classified.

mod common;

use std::process::Command;

use common::TempDir;
use fmnist::data::files::{Location, Origin};
use fmnist::inference::to_fashion_mnist;
use image::{GrayImage, ImageBuffer, Luma, Rgb};

fn fmnist(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(args)
        .env_remove("FMNIST_DATA")
        .output()
        .unwrap()
}

#[test]
fn pictures_are_converted_like_fashion_mnist() {
    // A dark trouser shape on a white 300x200 background: inverted, cropped, scaled, centred.
    let mut picture = GrayImage::from_pixel(300, 200, Luma([255]));
    for y in 40..160 {
        for x in 130..170 {
            picture.put_pixel(x, y, Luma([20]));
        }
    }
    let img = to_fashion_mnist(&picture);
    // The object is now light on black, 28 pixels tall and centred.
    assert_eq!(img[0], 0, "background is black");
    assert!(
        img[14 * 28 + 14] > 200,
        "object is light: {}",
        img[14 * 28 + 14]
    );
    let rows: Vec<usize> = (0..28).filter(|r| img[r * 28 + 14] > 100).collect();
    assert_eq!(
        (rows[0], *rows.last().unwrap()),
        (0, 27),
        "scaled to the full height"
    );
    let cols: Vec<usize> = (0..28).filter(|c| img[14 * 28 + c] > 100).collect();
    assert!(cols.len() >= 8 && cols.len() <= 11, "aspect kept: {cols:?}");
    assert!(
        (cols[0] + cols.last().unwrap()) / 2 == 13 || (cols[0] + cols.last().unwrap()) / 2 == 14
    );
}

#[test]
fn predict_classifies_pictures_and_reports_bad_files() {
    let data = common::real_data_dir();
    let ds = fmnist::data::load(
        Location {
            dir: data.clone(),
            origin: Origin::Flag,
        },
        false,
    )
    .unwrap();
    let runs = TempDir::new("predict-runs");
    let out = fmnist(&[
        "train",
        "--preset",
        "seed-mlp",
        "--epochs",
        "5",
        "--quiet",
        "--runs-dir",
        runs.path().to_str().unwrap(),
        "--name",
        "m",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = TempDir::new("predict-pics");
    // Test image 0 (an ankle boot, class 9) as a large PNG, and test image 1 (a pullover, class 2)
    // as a colour JPEG drawn dark-on-light.
    let (boot, pullover) = (ds.test.image(0), ds.test.image(1));
    assert_eq!((ds.test.labels[0], ds.test.labels[1]), (9, 2));
    let big = image::imageops::resize(
        &GrayImage::from_raw(28, 28, boot.to_vec()).unwrap(),
        280,
        280,
        image::imageops::FilterType::Triangle,
    );
    let png = dir.path().join("boot.png");
    big.save(&png).unwrap();
    let colour: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(112, 112, |x, y| {
        let v = 255 - pullover[(y / 4 * 28 + x / 4) as usize];
        Rgb([v, v.saturating_sub(30), v])
    });
    let jpg = dir.path().join("pullover.jpg");
    colour.save(&jpg).unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"this is not a picture").unwrap();
    // A PNG header announcing 20000 x 20000 pixels: refused before any allocation.
    let huge = dir.path().join("huge.png");
    let mut bytes = vec![
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, b'I', b'H', b'D', b'R',
    ];
    bytes.extend_from_slice(&20000u32.to_be_bytes());
    bytes.extend_from_slice(&20000u32.to_be_bytes());
    bytes.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(&huge, bytes).unwrap();
    let missing = dir.path().join("missing.png");

    let run = runs.path().join("m");
    let paths = [&png, &empty, &jpg, &text, &huge, &missing];
    let mut args = vec![
        "predict".to_string(),
        "--run".into(),
        run.display().to_string(),
        "--json".into(),
    ];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "one answer per picture, in order");
    assert_eq!(
        lines[0]["predictions"][0]["name"], "Ankle boot",
        "{}",
        lines[0]
    );
    assert_eq!(lines[0]["predictions"].as_array().unwrap().len(), 3);
    let p: f64 = lines[0]["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["probability"].as_f64().unwrap())
        .sum();
    assert!(p <= 1.0 + 1e-6 && p > 0.5);
    assert_eq!(
        lines[2]["predictions"][0]["name"], "Pullover",
        "{}",
        lines[2]
    );
    assert!(
        lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("the file is empty"),
        "{}",
        lines[1]
    );
    assert!(
        lines[3]["error"]
            .as_str()
            .unwrap()
            .contains("not a readable image"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4]["error"]
            .as_str()
            .unwrap()
            .contains("not a readable image"),
        "{}",
        lines[4]
    );
    assert!(
        lines[5]["error"].as_str().unwrap().contains("missing.png"),
        "{}",
        lines[5]
    );

    // Plain output: one line per picture, the errors on stderr, one line each.
    let out = fmnist(&[
        "predict",
        "--run",
        run.to_str().unwrap(),
        png.to_str().unwrap(),
        text.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Ankle boot"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.png") && !err.contains("panicked"),
        "{err}"
    );
}
