//! The strict GGUF parser on arbitrary bytes: a split or a typed error, never a panic and no
//! allocation sized by an unchecked count; an accepted file reassembles byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_formats::{gguf, skeleton};

fuzz_target!(|data: &[u8]| {
    if let Ok((c, _)) = gguf::parse(data) {
        let sk = c.skeleton_bytes(data).unwrap();
        let parts: Vec<&[u8]> = c.tensors.iter().map(|t| &data[t.start as usize..t.end as usize]).collect();
        assert_eq!(skeleton::reassemble_to_vec(&sk, &parts).unwrap(), data);
    }
});
