//! The strict safetensors parser on arbitrary bytes: a header or a typed error, never a panic,
//! and no allocation sized by a length read from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = neurstore_core::safetensors::parse(data);
});
