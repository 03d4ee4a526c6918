//! Fuzz target for the PROXY protocol header reader (`fulcrum_core::proxy_header`): the
//! bytes a balancer in front (or an attacker who is not one) sends first, read the way the
//! socket reader reads them, step by step.
//!
//! Checks: nothing panics; a step never asks for zero bytes or for more than a header can
//! hold; a complete header is exactly the bytes read (so nothing of the client's own stream
//! was consumed); the result does not depend on how the bytes were split, since the reader
//! asks for the same counts whatever the network delivers; and a header that is recognised
//! by its first bytes is what `looks_like_header` says.

#![no_main]

use fulcrum_core::proxy_header::{MAX_HEADER, Step, looks_like_header, step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut n = 0;
    let outcome = loop {
        match step(&data[..n]) {
            Ok(Step::Need(k)) => {
                assert!(k > 0, "a step asks for at least one byte");
                assert!(n + k <= MAX_HEADER, "never more than a header can hold");
                if n + k > data.len() {
                    break None;
                }
                n += k;
            }
            Ok(Step::Done { len, client }) => {
                assert_eq!(len, n, "the header is exactly the bytes read");
                break Some(Ok(client));
            }
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "one log line");
                break Some(Err(()));
            }
        }
    };
    if let Some(Ok(_)) = outcome {
        // A complete header starts like one (v2 headers are at least 16 bytes, v1 at least 8).
        assert!(looks_like_header(&data[..n]));
        // Asking again with the same bytes gives the same answer.
        assert!(matches!(step(&data[..n]), Ok(Step::Done { len, .. }) if len == n));
    }
});
