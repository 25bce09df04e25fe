//! The configuration and study parsers: any text must parse or give an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = fmnist::training::TrainConfig::from_toml(text, "fuzz.toml");
    let _ = fmnist::study::Study::parse(text, Path::new("fuzz-study.toml"));
});
