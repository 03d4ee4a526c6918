//! Whole-codec tests: byte streams through [`Decoder`] and [`Session`] together, one case per
//! error kind, the worked example of `docs/agent-protocol.md` (asserted here and looked up in
//! the document, so neither can drift), and byte-for-byte agreement with
//! `examples/agent_client.py`.

use std::path::PathBuf;
use std::process::Command;

use super::*;

const KEY: &[u8] = b"example-key";
const NONCE: [u8; NONCE_LEN] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// The frames of the worked example in docs/agent-protocol.md (key "example-key", nonce
/// 00..0f): HELLO seq 1, REPORT seq 2, BYE seq 3.
const HELLO_HEX: &str = "005e1000000000000000017b22706f6f6c223a22617070222c2261646472657373223a223132372e302e302e313a39303031222c2276657273696f6e223a317d9e0a16997035202536cef3a4da227bdb7f327e768a0b31efce434288e0ff9fd2";
const REPORT_HEX: &str = "005c1100000000000000027b22636c69656e7473223a332c227175657565223a302c22776569676874223a35302c227374617465223a22647261696e227d5b06723b7688142f4711ef0abc816e9543a28fca747184bf4790c8361c83f40f";
const BYE_HEX: &str =
    "0029120000000000000003a7c5f1eea30b972e9650b1bf8505427b49ea2111f9aaf377ee6ab003eabd5ba6";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hello(pool: &str, address: &str) -> Message {
    Message::Hello(Hello { pool: pool.into(), address: address.into(), version: VERSION })
}

fn report(clients: u64) -> Message {
    Message::Report(Report { clients, queue: 0, weight: None, state: None })
}

fn example() -> [Message; 3] {
    [
        hello("app", "127.0.0.1:9001"),
        Message::Report(Report {
            clients: 3,
            queue: 0,
            weight: Some(50),
            state: Some(AgentState::Drain),
        }),
        Message::Bye,
    ]
}

fn enc(seq: u64, msg: &Message) -> Vec<u8> {
    encode_message(KEY, &NONCE, seq, msg)
}

/// What the balancer makes of a whole connection's bytes: the messages it accepted up to the
/// first error, and that error (including truncation at end of stream).
fn run(stream: &[u8]) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = Decoder::new();
    let mut session = Session::new(KEY, NONCE);
    let mut got = Vec::new();
    for chunk in stream.chunks(MAX_BUFFER / 2) {
        if let Err(e) = decoder.push(chunk) {
            return (got, Some(e));
        }
        loop {
            match decoder.next_frame().and_then(|f| f.map(|f| session.open(&f)).transpose()) {
                Ok(Some(msg)) => got.push(msg),
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    (got, decoder.finish().err())
}

/// One case: `frames` concatenated must yield `accepted` messages, then `error`.
fn check(frames: &[Vec<u8>], accepted: usize, error: Option<FrameError>) {
    let (got, err) = run(&frames.concat());
    assert_eq!((got.len(), err), (accepted, error), "messages: {got:?}");
}

#[test]
fn round_trip() {
    let msgs = [
        hello("app", "[2001:db8::1]:443"),
        report(0),
        Message::Report(Report {
            clients: u64::MAX,
            queue: u64::MAX,
            weight: Some(u32::MAX),
            state: Some(AgentState::Up),
        }),
        Message::Report(Report { clients: 1, queue: 2, weight: Some(0), state: None }),
        Message::Report(Report {
            clients: 1,
            queue: 2,
            weight: None,
            state: Some(AgentState::Down),
        }),
        Message::Bye,
    ];
    // Gaps in the sequence are fine: only strictly increasing matters.
    let seqs = [1, 2, 10, 11, u64::MAX - 1, u64::MAX];
    let stream: Vec<u8> = msgs.iter().zip(seqs).flat_map(|(m, s)| enc(s, m)).collect();
    let (got, err) = run(&stream);
    assert_eq!(err, None);
    assert_eq!(got, msgs);
}

#[test]
fn every_error_kind_through_the_pipeline() {
    let h = enc(1, &hello("app", "127.0.0.1:9001"));
    // Framing.
    check(&[h.clone(), vec![0x04, 0x01]], 1, Some(FrameError::Oversized(1025)));
    check(
        &[vec![0x00, 0x28, kind::REPORT]],
        0,
        Some(FrameError::Garbage("length field too small for kind, seq and MAC")),
    );
    check(&[h[..h.len() - 1].to_vec()], 0, Some(FrameError::Truncated));
    check(
        &[h.clone(), encode_error("shutting down")],
        1,
        Some(FrameError::Remote("shutting down".into())),
    );
    // Authentication.
    check(
        &[encode_message(b"other-key", &NONCE, 1, &hello("app", "127.0.0.1:9001"))],
        0,
        Some(FrameError::BadMac),
    );
    check(
        &[encode_message(KEY, &[9; NONCE_LEN], 1, &hello("app", "127.0.0.1:9001"))],
        0,
        Some(FrameError::BadMac),
    );
    // Ordering.
    check(
        &[enc(0, &hello("app", "127.0.0.1:9001"))],
        0,
        Some(FrameError::Replayed { seq: 0, last: 0 }),
    );
    check(&[h.clone(), h.clone()], 1, Some(FrameError::Replayed { seq: 1, last: 1 }));
    check(
        &[h.clone(), enc(5, &report(1)), enc(4, &report(1))],
        2,
        Some(FrameError::Replayed { seq: 4, last: 5 }),
    );
    check(&[enc(1, &report(1))], 0, Some(FrameError::UnexpectedKind(kind::REPORT)));
    check(&[enc(1, &Message::Bye)], 0, Some(FrameError::UnexpectedKind(kind::BYE)));
    check(
        &[h.clone(), enc(2, &hello("app", "127.0.0.1:9001"))],
        1,
        Some(FrameError::UnexpectedKind(kind::HELLO)),
    );
    check(
        &[h.clone(), enc(2, &Message::Bye), enc(3, &report(1))],
        2,
        Some(FrameError::UnexpectedKind(kind::REPORT)),
    );
    check(
        &[h.clone(), encode_raw(KEY, &NONCE, 0x20, 2, b"{}")],
        1,
        Some(FrameError::UnexpectedKind(0x20)),
    );
    check(
        &[encode_raw(KEY, &NONCE, kind::CHALLENGE, 1, b"")],
        0,
        Some(FrameError::UnexpectedKind(kind::CHALLENGE)),
    );
    // Payload, after a valid MAC.
    let v2 =
        Message::Hello(Hello { pool: "app".into(), address: "127.0.0.1:9001".into(), version: 2 });
    let (_, err) = run(&enc(1, &v2));
    assert!(
        matches!(err, Some(FrameError::BadPayload(ref why)) if why.contains("version 2")),
        "{err:?}"
    );
    for bad in
        [hello("", "127.0.0.1:9001"), hello("app", "app.local:80"), hello("app", "127.0.0.1:0")]
    {
        assert!(matches!(run(&enc(1, &bad)).1, Some(FrameError::BadPayload(_))), "{bad:?}");
    }
    let unknown = encode_raw(KEY, &NONCE, kind::REPORT, 2, br#"{"clients":1,"queue":0,"cpu":3}"#);
    assert!(
        matches!(run(&[h.clone(), unknown].concat()), (ref ok, Some(FrameError::BadPayload(_))) if ok.len() == 1)
    );
}

#[test]
fn refused_frames_do_not_change_the_session() {
    let mut s = Session::new(KEY, NONCE);
    let open = |s: &mut Session, bytes: &[u8]| {
        let mut d = Decoder::new();
        d.push(bytes).unwrap();
        s.open(&d.next_frame().unwrap().unwrap())
    };
    assert_eq!(
        open(&mut s, &enc(3, &hello("app", "10.0.0.1:80"))),
        Ok(hello("app", "10.0.0.1:80"))
    );
    assert_eq!(s.last_seq(), 3);
    let bad = encode_raw(KEY, &NONCE, kind::REPORT, 7, b"{}");
    assert!(matches!(open(&mut s, &bad), Err(FrameError::BadPayload(_))));
    assert_eq!(s.last_seq(), 3);
    assert_eq!(open(&mut s, &enc(4, &report(2))), Ok(report(2)));
    assert_eq!(s.last_seq(), 4);
    assert!(!format!("{s:?}").contains("mac"), "Debug must not show key state: {s:?}");
}

#[test]
fn worked_example_bytes() {
    let [h, r, b] = example();
    assert_eq!(hex(&enc(1, &h)), HELLO_HEX);
    assert_eq!(hex(&enc(2, &r)), REPORT_HEX);
    assert_eq!(hex(&enc(3, &b)), BYE_HEX);
    assert_eq!(hex(&challenge_bytes(&NONCE)), "464c43520101000102030405060708090a0b0c0d0e0f");
    assert_eq!(hex(&encode_error("bad_mac")), "00087f6261645f6d6163");
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

#[test]
fn protocol_document_shows_the_tested_bytes() {
    let path = repo_file("docs/agent-protocol.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    for want in [
        HELLO_HEX,
        REPORT_HEX,
        BYE_HEX,
        "464c43520101000102030405060708090a0b0c0d0e0f",
        "00087f6261645f6d6163",
        // The HELLO's MAC on its own, as the document breaks the frame down.
        &HELLO_HEX[HELLO_HEX.len() - 64..],
    ] {
        assert!(doc.contains(want), "{} does not contain {want}", path.display());
    }
}

/// Runs the example client's offline mode and returns its three hex lines.
fn python_frames(name: &str, key_file_content: &str, args: &[&str]) -> Vec<String> {
    let key_file =
        std::env::temp_dir().join(format!("fulcrum-agent-{}-{name}.key", std::process::id()));
    std::fs::write(&key_file, key_file_content).unwrap();
    let out = Command::new("python3")
        .arg(repo_file("examples/agent_client.py"))
        .arg("--key-file")
        .arg(&key_file)
        .args(["--print-hex", "--nonce-hex", &hex(&NONCE)])
        .args(args)
        .output();
    let _ = std::fs::remove_file(&key_file);
    let out = out.expect("python3 must be installed to run this test");
    assert!(
        out.status.success(),
        "agent_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn python_example_client_writes_the_same_bytes() {
    // Surrounding whitespace in the key file is not part of the key.
    let got = python_frames(
        "example",
        "  example-key\n",
        &[
            "--pool",
            "app",
            "--address",
            "127.0.0.1:9001",
            "--clients",
            "3",
            "--queue",
            "0",
            "--weight",
            "50",
            "--state",
            "drain",
        ],
    );
    assert_eq!(got, [HELLO_HEX, REPORT_HEX, BYE_HEX]);

    let got = python_frames(
        "unicode",
        "example-key",
        &[
            "--pool",
            "café",
            "--address",
            "[2001:db8::1]:8080",
            "--clients",
            "18446744073709551615",
            "--queue",
            "7",
        ],
    );
    let want = [
        hello("café", "[2001:db8::1]:8080"),
        Message::Report(Report { clients: u64::MAX, queue: 7, weight: None, state: None }),
        Message::Bye,
    ];
    let want: Vec<String> = want.iter().zip(1..).map(|(m, seq)| hex(&enc(seq, m))).collect();
    assert_eq!(got, want);
}
