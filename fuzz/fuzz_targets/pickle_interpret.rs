//! The restricted pickle interpreter on arbitrary bytes: values or a typed error naming the
//! refused opcode or global, never a panic, memory bounded by the input's length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = neurstore_formats::pytorch::pickle::interpret(data);
});
