//! The order-0 entropy coder (grouped codec plane mode 2). Any input is encoded and must decode
//! back exactly; the input is also decoded as a hostile payload (the first 4 bytes choose the
//! output length, below 1 MiB), and the valid payload with one bit flipped is decoded too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_core::codec::entropy;

fuzz_target!(|data: &[u8]| {
    let mut enc = Vec::new();
    entropy::encode(data, &mut enc);
    let mut out = vec![0u8; data.len()];
    entropy::decode(&enc, &mut out).expect("encoder output decodes");
    assert_eq!(out, data);

    if let Some((len, payload)) = data.split_first_chunk::<4>() {
        let mut out = vec![0u8; (u32::from_le_bytes(*len) % (1 << 20)) as usize];
        let _ = entropy::decode(payload, &mut out);
    }

    if !enc.is_empty() {
        let bit = data.iter().fold(0usize, |h, &b| h.wrapping_mul(31) ^ b as usize) % (enc.len() * 8);
        enc[bit / 8] ^= 1 << (bit % 8);
        let mut out = vec![0u8; data.len()];
        let _ = entropy::decode(&enc, &mut out);
    }
});
