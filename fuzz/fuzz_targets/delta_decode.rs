//! The lossless delta decoder. The first 4 bytes choose the output length (below 64 KiB); the
//! base is a fixed pattern of that length; the rest is the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_core::codec::delta;

fuzz_target!(|data: &[u8]| {
    let Some((len, blob)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = (u32::from_le_bytes(*len) % (1 << 16)) as usize;
    let base: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = vec![0u8; len];
    let _ = delta::decode_into(blob, &base, &mut out);
});
