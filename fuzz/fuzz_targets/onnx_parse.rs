//! The ONNX wire walker and graph decoder on arbitrary bytes: a split or a typed error, never a
//! panic; an accepted model reassembles byte for byte from its skeleton and tensor ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_formats::{onnx, skeleton};

fuzz_target!(|data: &[u8]| {
    let _ = onnx::info::info(data, &|_| false);
    if let Ok(m) = onnx::parse(data) {
        let sk = m.container.skeleton_bytes(data).unwrap();
        let parts: Vec<&[u8]> = m.container.tensors.iter().map(|t| &data[t.start as usize..t.end as usize]).collect();
        assert_eq!(skeleton::reassemble_to_vec(&sk, &parts).unwrap(), data);
    }
});
