//! The download path, against a loopback HTTP server serving good, truncated and wrong files.

mod common;

use common::{Reply, TempDir, serve};
use fmnist::data::download::{self, Outcome};
use fmnist::data::files::{self, FILES};

/// The real gz files, as a mirror would serve them (Debian's recompressed copies verify by the
/// checksum of their decompressed bytes).
fn real_file(name: &str) -> Vec<u8> {
    std::fs::read(common::real_data_dir().join(name)).unwrap()
}

#[test]
fn good_mirror_downloads_and_verifies_all_files() {
    let (url, served) = serve(|path| Reply::Body(real_file(path)), 4);
    let dir = TempDir::new("dl-good");
    let outcomes = download::download_all(dir.path(), &url, false).unwrap();
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Downloaded));
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 4);
    for spec in FILES {
        let (_, _, verified) = files::read_verified(dir.path(), &spec, true).unwrap();
        assert_eq!(verified, files::Verified::Decompressed);
    }
    // Only the four files: no temporary left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    // A second run finds them present and fetches nothing.
    let outcomes = download::download_all(dir.path(), "http://127.0.0.1:9/", false).unwrap();
    assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Present));
}

#[test]
fn truncated_transfer_is_retried_then_refused_and_leaves_no_file() {
    let (url, served) = serve(
        |path| {
            let body = real_file(path);
            Reply::Truncated {
                announced: body.len(),
                body: body[..body.len() / 3].to_vec(),
            }
        },
        download::ATTEMPTS as usize,
    );
    let dir = TempDir::new("dl-trunc");
    let err = download::download_all(dir.path(), &url, false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.contains("attempts"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(
        served.load(std::sync::atomic::Ordering::SeqCst),
        download::ATTEMPTS as usize
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing trusted is left"
    );
}

#[test]
fn wrong_file_is_refused_by_checksum() {
    // Serves the labels file under every name: a valid gzip of the wrong content.
    let (url, _) = serve(|_| Reply::Body(real_file("t10k-labels-idx1-ubyte.gz")), 16);
    let dir = TempDir::new("dl-wrong");
    let err = download::download_all(dir.path(), &url, false).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!dir.path().join("train-images-idx3-ubyte.gz").exists());
}

#[test]
fn missing_file_on_mirror_is_an_http_error() {
    let (url, _) = serve(|_| Reply::NotFound, 16);
    let dir = TempDir::new("dl-404");
    let err = download::download_all(dir.path(), &url, false).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}
