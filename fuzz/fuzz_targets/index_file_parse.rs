//! The similarity index file parser (`packs/index.hnsw`). The input is parsed as is, then with
//! a valid checksum appended, so the fuzzer reaches the parser behind the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_storage::index::TensorIndex;

fuzz_target!(|data: &[u8]| {
    let _ = TensorIndex::decode(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(blake3::hash(data).as_bytes());
    let _ = TensorIndex::decode(&sealed);
});
