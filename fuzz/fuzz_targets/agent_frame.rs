//! Fuzz target for the agent protocol codec (`fulcrum_core::agent`): bytes from an untrusted
//! backend go through `Decoder` (in pieces, the way TCP delivers them) and every frame through
//! `Session::open`, checking that nothing panics and that the codec's invariants hold.
//!
//! Input: the first byte picks the mode, the rest is data.
//! * bit 7 clear: the data is the raw stream, as a hostile peer would send it. The low 6 bits
//!   pick the chunking: 0 pushes everything at once (exercising the buffer limit), anything
//!   else seeds a pseudo-random split into reads of at most `Decoder::room()` bytes.
//! * bit 7 set: the data is a list of records `kind u8 | seq step u8 | len u16 BE | payload`,
//!   each turned into a correctly signed frame with the fixed key and nonce. Raw bytes almost
//!   never pass the MAC, so without this mode the JSON parsing and validation behind it would
//!   go unfuzzed.
//!
//! The key and nonce are the worked example's (`docs/agent-protocol.md`), so the seeds in
//! `fuzz/corpus/agent_frame` are valid streams.

#![no_main]

use fulcrum_core::agent::{
    Decoder, FrameError, MAX_BUFFER, Message, NONCE_LEN, Session, encode_message, encode_raw, kind,
    parse_challenge, read_error_frame,
};
use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"example-key";
const NONCE: [u8; NONCE_LEN] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The client-side parsers see the same bytes; they must only ever answer, never panic.
    let _ = parse_challenge(rest);
    let _ = read_error_frame(rest);
    if mode & 0x80 == 0 {
        drive(rest, mode & 0x3f);
    } else {
        drive(&signed_stream(rest), mode & 0x3f);
    }
});

/// Frames with valid MACs built from `kind | seq step | len | payload` records.
fn signed_stream(mut records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    while let Some((&[k, step, hi, lo], rest)) = records.split_first_chunk::<4>() {
        // Bias towards the kinds the protocol defines; the top values stay raw.
        let k = match k {
            0..=63 => kind::HELLO,
            64..=191 => kind::REPORT,
            192..=223 => kind::BYE,
            other => other,
        };
        seq = seq.wrapping_add(u64::from(step));
        let len = usize::from(u16::from_be_bytes([hi, lo])).min(rest.len());
        let (payload, after) = rest.split_at(len);
        out.extend_from_slice(&encode_raw(KEY, &NONCE, k, seq, payload));
        records = after;
    }
    out
}

fn drive(stream: &[u8], chunking: u8) {
    let mut decoder = Decoder::new();
    let mut session = Session::new(KEY, NONCE);
    let mut accepted: Vec<(u64, Message)> = Vec::new();
    let mut rng = u32::from(chunking).wrapping_mul(0x9e37_79b9) | 1;
    let mut rest = stream;
    let mut failure = None;
    let mut decoder_failed = false;
    while !rest.is_empty() && failure.is_none() {
        let n = if chunking == 0 {
            rest.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (1 + rng as usize % 300).min(rest.len()).min(decoder.room())
        };
        let (now, later) = rest.split_at(n);
        rest = later;
        if let Err(e) = decoder.push(now) {
            failure = Some(e);
            decoder_failed = true;
            break;
        }
        loop {
            assert!(decoder.buffered() <= MAX_BUFFER);
            match decoder.next_frame() {
                Ok(None) => break,
                Ok(Some(raw)) => match session.open(&raw) {
                    Ok(msg) => {
                        assert_eq!(session.last_seq(), raw.seq);
                        accepted.push((raw.seq, msg));
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
                Err(e) => {
                    failure = Some(e);
                    decoder_failed = true;
                    break;
                }
            }
        }
    }
    if failure.is_none() && decoder.buffered() > 0 {
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));
    }
    if let Some(e) = failure {
        // Errors end up in logs and ERROR frames: one line, a stable label.
        assert!(!e.to_string().contains('\n'));
        assert!(!e.reason().is_empty());
        // A decoder error is final: asking again repeats it.
        if decoder_failed {
            assert_eq!(decoder.next_frame(), Err(e));
        }
    }
    check_order(&accepted);
    check_reencoding(&accepted);
}

/// What a session accepts obeys the protocol: HELLO first and once, nothing after BYE,
/// sequence numbers strictly increasing.
fn check_order(accepted: &[(u64, Message)]) {
    for (i, (seq, msg)) in accepted.iter().enumerate() {
        assert_eq!(matches!(msg, Message::Hello(_)), i == 0, "HELLO first and only first");
        assert!(*seq > 0);
        if i > 0 {
            assert!(accepted[i - 1].0 < *seq);
            assert!(accepted[i - 1].1 != Message::Bye);
        }
    }
}

/// Every accepted message, written back out by our own encoder, decodes to itself.
fn check_reencoding(accepted: &[(u64, Message)]) {
    let mut decoder = Decoder::new();
    let mut session = Session::new(KEY, NONCE);
    for (seq, msg) in accepted {
        let frame = encode_message(KEY, &NONCE, *seq, msg);
        assert!(frame.len() <= MAX_BUFFER, "a valid message always fits in a frame");
        decoder.push(&frame).ok();
        let raw = decoder.next_frame().ok().flatten();
        let back = raw.map(|raw| session.open(&raw));
        assert_eq!(back, Some(Ok(msg.clone())));
    }
}
