//! The picture loader of `fmnist predict`: any bytes must decode to a 28x28 image or give an
//! error, never a panic (including huge declared sizes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fmnist::inference::decode_picture(data);
});
