//! The grouped (byte-grouped, chunked zstd) decoder. The first 4 bytes choose the output length
//! the catalog would declare (below 1 MiB); the rest is the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_core::codec::grouped;

fuzz_target!(|data: &[u8]| {
    let Some((len, blob)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut out = vec![0u8; (u32::from_le_bytes(*len) % (1 << 20)) as usize];
    let _ = grouped::decode_into(blob, &mut out);
});
