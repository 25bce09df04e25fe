//! Fetching the four files over HTTP(S) with retries, a progress bar, SHA-256 verification and
//! atomic writes: a file only appears under its real name once it is complete and verified.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::files::{self, FileSpec};
use crate::error::{Error, Result};
use crate::fsio;

/// Zalando's public S3 bucket, the dataset's official host.
pub const OFFICIAL_MIRROR: &str = "https://fashion-mnist.s3.eu-central-1.amazonaws.com/";
/// Environment variable overriding the download base URL.
pub const MIRROR_ENV: &str = "FMNIST_MIRROR";
/// Attempts per file before giving up.
pub const ATTEMPTS: u32 = 3;

/// The base URL: `FMNIST_MIRROR` if set, else the official host.
pub fn default_mirror() -> String {
    std::env::var(MIRROR_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OFFICIAL_MIRROR.to_string())
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A verified copy was already there.
    Present,
    /// The file was fetched and verified.
    Downloaded,
}

/// Downloads every missing or damaged file of the dataset into `dir`.
pub fn download_all(dir: &Path, mirror: &str, progress: bool) -> Result<Vec<(FileSpec, Outcome)>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut outcomes = Vec::new();
    for spec in files::FILES {
        let dest = dir.join(spec.gz_name());
        let present = dest.is_file()
            && fsio::read(&dest)
                .and_then(|bytes| files::decode_verified(&dest, bytes, &spec, true))
                .is_ok();
        if present {
            outcomes.push((spec, Outcome::Present));
            continue;
        }
        let url = format!("{}/{}", mirror.trim_end_matches('/'), spec.gz_name());
        download_file(&url, &dest, &spec, progress)?;
        outcomes.push((spec, Outcome::Downloaded));
    }
    Ok(outcomes)
}

/// Downloads `url` to `dest`, retrying up to [`ATTEMPTS`] times.
pub fn download_file(url: &str, dest: &Path, spec: &FileSpec, progress: bool) -> Result<()> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match try_download(url, dest, spec, progress) {
            Ok(()) => return Ok(()),
            Err(reason) => {
                last = reason;
                if attempt < ATTEMPTS {
                    eprintln!("{url}: {last}; retrying ({attempt}/{ATTEMPTS})");
                    std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
                }
            }
        }
    }
    Err(Error::Download(format!(
        "{url}: {last} (gave up after {ATTEMPTS} attempts); check the network or pass --mirror URL"
    )))
}

/// One attempt: stream into a temporary file beside `dest`, verify, then rename.
fn try_download(url: &str, dest: &Path, spec: &FileSpec, progress: bool) -> Result<(), String> {
    let tmp = fsio::temp_path(dest);
    let result = fetch_into(url, &tmp, progress).and_then(|()| {
        let bytes =
            std::fs::read(&tmp).map_err(|e| format!("cannot read back {}: {e}", tmp.display()))?;
        files::decode_verified(dest, bytes, spec, true)
            .map(|_| ())
            .map_err(|e| match e {
                Error::Data { reason, .. } => reason,
                other => other.to_string(),
            })
    });
    match result {
        Ok(()) => fsio::commit(&tmp, dest).map_err(|e| e.to_string()),
        Err(reason) => {
            let _ = std::fs::remove_file(&tmp);
            Err(reason)
        }
    }
}

/// Streams the body of `url` into `path` and fsyncs it.
fn fetch_into(url: &str, path: &Path, progress: bool) -> Result<(), String> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(600)))
            .build(),
    );
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let expected = response.body().content_length();
    let mut reader = response.into_body().into_reader();
    let mut file =
        File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let bar = if progress {
        let bar = ProgressBar::new(expected.unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut buf = vec![0u8; 1 << 16];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                return Err(format!("connection broken after {received} bytes ({e})"));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish();
    if let Some(len) = expected
        && received != len
    {
        return Err(format!("truncated: received {received} of {len} bytes"));
    }
    file.sync_all()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
