//! The strict zip reader and the restricted unpickler behind PyTorch checkpoints, on arbitrary
//! bytes: a split or a typed error, never a panic, never an executed pickle; an accepted
//! checkpoint reassembles byte for byte and every view materializes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use neurstore_formats::{container::materialize, pytorch, skeleton};

fuzz_target!(|data: &[u8]| {
    if let Ok((c, _)) = pytorch::parse(data) {
        let sk = c.skeleton_bytes(data).unwrap();
        let parts: Vec<&[u8]> = c.tensors.iter().map(|t| &data[t.start as usize..t.end as usize]).collect();
        assert_eq!(skeleton::reassemble_to_vec(&sk, &parts).unwrap(), data);
        for v in &c.views {
            materialize(v, parts[v.tensor]).unwrap();
        }
    }
});
