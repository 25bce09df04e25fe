//! Atomic file writes: write a temporary file in the same directory, fsync it, rename it over the
//! destination, then fsync the directory. A crash at any instant leaves either the old file or the
//! new one, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Temporary path beside `path`, unique to this process, keeping its extension (writers such as
/// the PNG encoder pick the format from it): `dir/.name.tmp-PID.ext`.
pub fn temp_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp-{}{ext}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, err));
    }
    commit(&tmp, path)
}

/// Renames a finished, fsynced temporary file onto `path` and fsyncs the directory.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(err) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io(path, err));
    }
    sync_dir(path);
    Ok(())
}

/// Fsyncs the directory holding `path`, so that a rename survives a power cut. Best effort.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = dir.sync_all();
    }
}

/// Writes a string to `path` atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes())
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    write_text(path, &(text + "\n"))
}

/// Reads a whole file, mapping errors to [`Error::Io`].
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads a whole UTF-8 file, mapping errors to [`Error::Io`].
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Tunes glibc's allocator for training: large tensor buffers are reused from the heap instead
/// of being mapped and zero-faulted afresh for every batch (measured on the MLP: batch assembly
/// 23 ms -> 13 ms per epoch). No buffer is mapped on its own, whatever its size: evaluating the
/// `best` ResNet in batches of 2000 (400 MB activations) spent 304 of its 332 s in the kernel,
/// faulting in fresh pages. Called once by the command-line front end; a no-op elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Treats denormal floats as zero on this thread (x86 MXCSR flush-to-zero and denormals-are-zero).
/// Tiny activations and gradients late in training otherwise fall into the slow denormal range.
/// Set with `FMNIST_KEEP_DENORMALS=1` to keep IEEE behaviour.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("FMNIST_KEEP_DENORMALS").is_none() {
        #[allow(deprecated)]
        // SAFETY: only sets the FTZ and DAZ bits of this thread's floating-point control register.
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
    }
}

/// Checks that `name` (of a run or a study group, from a command line or a study file) is one
/// plain file name: ASCII letters, digits, `.`, `_`, `-` and `+`, not starting with `.`, at most
/// 100 characters. Such a name joined to a directory stays inside it, whatever the file said.
pub fn check_plain_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+');
    if name.is_empty() || name.len() > 100 || name.starts_with('.') || !name.chars().all(plain) {
        return Err(format!(
            "{what} {name:?} is not a plain name: use 1-100 letters, digits, '.', '_', '-' or '+', \
             not starting with '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_plain_name;

    #[test]
    fn plain_names_stay_inside_their_directory() {
        for good in ["mlp-relu", "lr-0.05", "h60-60", "a_b+c", "X1"] {
            assert!(check_plain_name("run name", good).is_ok(), "{good}");
        }
        let long = "a".repeat(101);
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "/etc", "a b", "é", &long,
        ] {
            assert!(check_plain_name("run name", bad).is_err(), "{bad:?}");
        }
    }
}
