//! The coordinator's handshake state machine fed with any sequence of frames.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ckpt_protocol::fuzz_handshake(data);
});
