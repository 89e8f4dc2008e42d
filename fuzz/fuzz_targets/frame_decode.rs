//! The tunnel frame decoder on arbitrary bytes: it must never panic, and whatever it accepts must
//! encode back to an equal frame.
#![no_main]

use bytes::Bytes;
use delegate_agent::protocol::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(Bytes::copy_from_slice(data)) {
        let again = encode(&frame).expect("a decoded frame encodes");
        assert_eq!(decode(again).expect("an encoded frame decodes"), frame);
    }
});
