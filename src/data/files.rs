//! The four dataset files: their names and checksums, where to look for them, and how to read one
//! with verification.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One of the four IDX files of Fashion-MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// File name without the `.gz` suffix.
    pub name: &'static str,
    /// SHA-256 of the official gzip file (as published by Zalando and Keras).
    pub gz_sha256: &'static str,
    /// SHA-256 of the decompressed bytes (the same for every correct copy, however compressed).
    pub raw_sha256: &'static str,
}

impl FileSpec {
    /// The compressed file name, as served by the official host.
    pub fn gz_name(&self) -> String {
        format!("{}.gz", self.name)
    }

    /// The path of this file in `dir`: the `.gz` file if present, else the decompressed one.
    pub fn find_in(&self, dir: &Path) -> Option<PathBuf> {
        [dir.join(self.gz_name()), dir.join(self.name)]
            .into_iter()
            .find(|p| p.is_file())
    }
}

pub const TRAIN_IMAGES: FileSpec = FileSpec {
    name: "train-images-idx3-ubyte",
    gz_sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    raw_sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
};
pub const TRAIN_LABELS: FileSpec = FileSpec {
    name: "train-labels-idx1-ubyte",
    gz_sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    raw_sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
};
pub const TEST_IMAGES: FileSpec = FileSpec {
    name: "t10k-images-idx3-ubyte",
    gz_sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    raw_sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
};
pub const TEST_LABELS: FileSpec = FileSpec {
    name: "t10k-labels-idx1-ubyte",
    gz_sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    raw_sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
};

/// All four files, training set first.
pub const FILES: [FileSpec; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// The directory the Debian package `dataset-fashion-mnist` installs.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Environment variable naming a data directory.
pub const DATA_ENV: &str = "FMNIST_DATA";

/// How to get the data, for error messages.
pub const INSTALL_HINT: &str = "install the Debian package (apt-get install dataset-fashion-mnist), \
     run `fmnist data download`, or pass --data-dir DIR";

/// "Fashion-MNIST not found", naming every place searched; `why_not_downloaded` (for example
/// "and --offline forbids downloading") follows the list.
pub fn not_found(why_not_downloaded: &str) -> Error {
    Error::DataNotFound(format!(
        "Fashion-MNIST not found (looked in ${DATA_ENV}, {} and {SYSTEM_DIR}){why_not_downloaded}; {INSTALL_HINT}",
        cache_dir().display(),
    ))
}

/// Where a data directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--data-dir`.
    Flag,
    /// The `FMNIST_DATA` environment variable.
    Env,
    /// The user cache directory, where downloads go.
    Cache,
    /// The Debian package's directory.
    System,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Flag => "--data-dir",
            Origin::Env => DATA_ENV,
            Origin::Cache => "user cache",
            Origin::System => "Debian package dataset-fashion-mnist",
        })
    }
}

/// A directory holding all four files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub dir: PathBuf,
    pub origin: Origin,
}

/// The download cache: `~/.cache/fmnist/fashion-mnist` (or the platform's cache directory).
pub fn cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("fmnist")
        .join("fashion-mnist")
}

/// The files of `FILES` missing from `dir`.
fn missing_in(dir: &Path) -> Vec<FileSpec> {
    FILES
        .iter()
        .copied()
        .filter(|f| f.find_in(dir).is_none())
        .collect()
}

/// Checks that a directory the user named holds all four files.
fn require(dir: &Path, origin: Origin) -> Result<Location> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(Error::Data {
            path: dir.to_path_buf(),
            reason: format!("data directory (from {origin}) {what}"),
            fix: format!(
                "pass a directory holding the four Fashion-MNIST files, or {INSTALL_HINT}"
            ),
        });
    }
    let missing = missing_in(dir);
    if let Some(first) = missing.first() {
        let names: Vec<String> = missing.iter().map(FileSpec::gz_name).collect();
        return Err(Error::Data {
            path: dir.join(first.gz_name()),
            reason: format!(
                "missing from the data directory (from {origin}): {}",
                names.join(", ")
            ),
            fix: format!(
                "run `fmnist data download --dir {}` or {INSTALL_HINT}",
                dir.display()
            ),
        });
    }
    Ok(Location {
        dir: dir.to_path_buf(),
        origin,
    })
}

/// Finds the data: `explicit` (from `--data-dir`), then `FMNIST_DATA`, then the user cache, then the
/// Debian package's directory. A directory the user named that lacks the data is an error; `None`
/// means no copy was found anywhere.
pub fn locate(explicit: Option<&Path>) -> Result<Option<Location>> {
    if let Some(dir) = explicit {
        return require(dir, Origin::Flag).map(Some);
    }
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()) {
        return require(Path::new(&dir), Origin::Env).map(Some);
    }
    for (dir, origin) in [
        (cache_dir(), Origin::Cache),
        (PathBuf::from(SYSTEM_DIR), Origin::System),
    ] {
        if missing_in(&dir).is_empty() {
            return Ok(Some(Location { dir, origin }));
        }
    }
    Ok(None)
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip bytes; `path` names the file in the error.
pub fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| Error::corrupt(path, format!("truncated or damaged gzip data ({e})")))?;
    Ok(out)
}

/// How a file's checksum was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The gzip file is byte-identical to the official one.
    OfficialGz,
    /// The decompressed bytes match (a recompressed copy, such as Debian's, or an unpacked file).
    Decompressed,
    /// Checksums were not checked (`--no-verify`).
    Unchecked,
}

/// Decompresses `bytes` (read from `path`) if needed and checks them against `spec`'s checksums.
/// Returns the decompressed bytes.
pub fn decode_verified(
    path: &Path,
    bytes: Vec<u8>,
    spec: &FileSpec,
    verify: bool,
) -> Result<(Vec<u8>, Verified)> {
    let official = verify && is_gzip(&bytes) && sha256_hex(&bytes) == spec.gz_sha256;
    let raw = if is_gzip(&bytes) {
        gunzip(path, &bytes)?
    } else {
        bytes
    };
    if official {
        return Ok((raw, Verified::OfficialGz));
    }
    if !verify {
        return Ok((raw, Verified::Unchecked));
    }
    let digest = sha256_hex(&raw);
    if digest != spec.raw_sha256 {
        return Err(Error::corrupt(
            path,
            format!(
                "checksum mismatch: the decompressed SHA-256 is {digest}, expected {} for {}",
                spec.raw_sha256, spec.name
            ),
        ));
    }
    Ok((raw, Verified::Decompressed))
}

/// Reads `spec`'s file from `dir`, decompressing and (if `verify`) checking it.
pub fn read_verified(
    dir: &Path,
    spec: &FileSpec,
    verify: bool,
) -> Result<(PathBuf, Vec<u8>, Verified)> {
    let path = spec.find_in(dir).ok_or_else(|| Error::Data {
        path: dir.join(spec.gz_name()),
        reason: "file not found".into(),
        fix: INSTALL_HINT.into(),
    })?;
    let bytes = crate::fsio::read(&path)?;
    let (raw, verified) = decode_verified(&path, bytes, spec, verify)?;
    Ok((path, raw, verified))
}
