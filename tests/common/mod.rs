//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use fmnist::data::idx::IdxArray;

/// The real dataset's directory, found as `fmnist train` finds it (`FMNIST_DATA`, the user
/// cache, the Debian package's directory) and, when there is no copy, downloaded into the user
/// cache by fmnist's own verified download (from `FMNIST_MIRROR` or the official host), as a
/// user's first `fmnist train` does. Once per test process.
pub fn real_data_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let options = fmnist::data::DataOptions::default();
        match fmnist::data::obtain(&options) {
            Ok(data) => data.location.dir,
            Err(e) => panic!("the real Fashion-MNIST data is needed: {e}"),
        }
    })
    .clone()
}

/// The project's root: `CARGO_MANIFEST_DIR` as cargo sets it when it runs a test (or as
/// `.ci/fresh-machine` sets it for a copy), else where the test was compiled.
pub fn project_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Whether this is CI (`CI=true`), where every tool a test needs must be there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// For a test that needs `what`: `true` to go on when it is `available`. Otherwise the test is
/// skipped with a line on the terminal saying why, or, under `CI=true`, fails.
pub fn require(what: &str, available: bool, fix: &str) -> bool {
    if available {
        return true;
    }
    assert!(!in_ci(), "{what} is required under CI=true: {fix}");
    // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {} needs {what} ({fix})",
        std::thread::current().name().unwrap_or("a test")
    );
    false
}

/// The first executable named `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fmnist-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gzips `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a small synthetic dataset (`n_train`/`n_test` examples) into `dir` as gz IDX files.
pub fn write_synthetic(dir: &Path, n_train: usize, n_test: usize) {
    let images = |n: usize| IdxArray {
        dims: vec![n, 28, 28],
        data: (0..n * 784).map(|i| (i * 7 % 256) as u8).collect(),
    };
    let labels = |n: usize| IdxArray {
        dims: vec![n],
        data: (0..n).map(|i| (i % 10) as u8).collect(),
    };
    let files = [
        ("train-images-idx3-ubyte.gz", images(n_train)),
        ("train-labels-idx1-ubyte.gz", labels(n_train)),
        ("t10k-images-idx3-ubyte.gz", images(n_test)),
        ("t10k-labels-idx1-ubyte.gz", labels(n_test)),
    ];
    for (name, array) in files {
        std::fs::write(dir.join(name), gzip(&array.to_bytes())).unwrap();
    }
}

/// How the loopback server answers a request for a path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 200 announcing this many bytes, sending only `body`, then closing.
    Truncated { body: Vec<u8>, announced: usize },
    /// 404.
    NotFound,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering from `route`; it serves at most `limit`
/// requests, then stops. Returns its base URL and a counter of requests served.
pub fn serve(
    route: impl Fn(&str) -> Reply + Send + 'static,
    limit: usize,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            let path = text
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            counter.fetch_add(1, Ordering::SeqCst);
            let (status, body, announced) = match route(&path) {
                Reply::Body(b) => ("200 OK", b.clone(), b.len()),
                Reply::Truncated { body, announced } => ("200 OK", body, announced),
                Reply::NotFound => ("404 Not Found", b"not found".to_vec(), 9),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {announced}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
        }
    });
    (url, served)
}

/// A study report's table rows (`report.md`) without the seconds-per-epoch column, the one
/// that differs between runs of the same recipe.
pub fn report_rows(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("report.md")).expect("a report");
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| ---"))
        .map(|l| {
            let mut cells: Vec<&str> = l.split('|').collect();
            cells.truncate(cells.len().saturating_sub(2));
            cells.join("|")
        })
        .collect()
}

/// Trains `preset` with `fmnist --threads 2 train --quiet` and `args` into `runs/name`, on the
/// real data, and returns the run's history.
pub fn train_history(
    runs: &Path,
    name: &str,
    preset: &str,
    args: &[&str],
) -> fmnist::training::History {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fmnist"))
        .args([
            "--threads",
            "2",
            "train",
            "--quiet",
            "--preset",
            preset,
            "--name",
            name,
        ])
        .arg("--runs-dir")
        .arg(runs)
        .arg("--data-dir")
        .arg(real_data_dir())
        .args(args)
        .output()
        .expect("fmnist runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fmnist::training::History::read(&runs.join(name)).expect("the run wrote its history")
}

/// Exit code 2 and exactly one line on stderr, containing `needle`.
pub fn refused(out: std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}
