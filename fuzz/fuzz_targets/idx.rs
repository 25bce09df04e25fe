//! The IDX reader and the dataset checks: any bytes, gzipped or not, must give a value or an
//! error, never a panic.
#![no_main]

use std::path::Path;

use fmnist::data::idx::IdxArray;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = IdxArray::parse(data);
    if fmnist::data::files::is_gzip(data) {
        let _ = fmnist::data::files::gunzip(Path::new("fuzz.gz"), data);
    }
    // The same bytes as an image file and as a label file.
    let half = data.len() / 2;
    let _ = fmnist::data::split_from(Path::new("images"), &data[..half], Path::new("labels"), &data[half..]);
});
