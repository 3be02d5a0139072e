//! The bounded (quantized) decoder. Byte 0 chooses the dtype, byte 1 whether there is a base,
//! the next 4 bytes the element count (below 16 Ki); the rest is the blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_core::codec::quantized;
use neurstore_core::dtype::DType;

fuzz_target!(|data: &[u8]| {
    let Some((head, blob)) = data.split_first_chunk::<6>() else {
        return;
    };
    let dtype = [DType::F16, DType::BF16, DType::F32, DType::F64][head[0] as usize % 4];
    let n = (u32::from_le_bytes([head[2], head[3], head[4], head[5]]) % (1 << 14)) as usize;
    let len = n * (dtype.bits() / 8) as usize;
    let base: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
    let base = (head[1] & 1 == 1).then_some(base.as_slice());
    let mut out = vec![0u8; len];
    let _ = quantized::decode_into(dtype, blob, base, &mut out);
});
