//! The skeleton decoder on arbitrary bytes (a stored skeleton could be damaged): a layout or a
//! typed error, never a panic; an accepted skeleton rebuilds a file of exactly its length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_formats::skeleton;

fuzz_target!(|data: &[u8]| {
    if let Ok(sk) = skeleton::decode(data) {
        if sk.layout.file_len <= 1 << 20 {
            let zeros: Vec<Vec<u8>> = sk.layout.tensors.iter().map(|t| vec![0u8; t.byte_len() as usize]).collect();
            let parts: Vec<&[u8]> = zeros.iter().map(Vec::as_slice).collect();
            let back = skeleton::reassemble_to_vec(data, &parts).unwrap();
            assert_eq!(back.len() as u64, sk.layout.file_len);
        }
    }
});
