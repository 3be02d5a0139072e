//! The HNSW graph parser of the similarity index file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = neurstore_core::hnsw::Hnsw::from_bytes(data);
});
