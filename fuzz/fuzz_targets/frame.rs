//! The frame decoder: any bytes, decoded incrementally and by the blocking reader.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ckpt_protocol::fuzz_frame(data);
});
