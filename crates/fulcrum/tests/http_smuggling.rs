//! Request smuggling against `protocol = "http"` frontends. Each test writes exact bytes from
//! a raw client socket through the real binary to a raw backend that records every byte it
//! receives and parses it strictly (one framing header, CRLF only, chunked framing checked
//! byte by byte). A hostile request must be refused (nothing reaches the backend) or
//! normalised (the backend sees exactly one well-framed request), and the request hidden in
//! it, `GET /smuggled`, never reaches the backend as a request of its own.
//!
//! Synchronisation: the client reads until the proxy closes (or until the one answer it
//! waits for is complete); then the daemon is killed, so every connection it had to the
//! backend ends, and the backend is settled with a marker connection (accepted after every
//! connection the daemon made) before its record is read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The request hidden in the hostile ones.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
/// The backend's answer to every complete request.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// How long the client waits for the proxy's answer or close.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// Bodies and heads the backend accepts; the tests send far less.
const MAX_MESSAGE: usize = 1 << 20;

include!("support/smuggling_harness.rs");

/// A body that is one message under `Content-Length` and two under chunked framing:
/// `0\r\n\r\n` ends the chunked body and leaves `GET /smuggled` as the next request.
fn cl_te_body() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

/// A POST carrying `te_lines` (whole header lines) and a Content-Length covering the whole
/// of [`cl_te_body`]: a front end that ignores the (obfuscated) Transfer-Encoding forwards
/// it all as one body, a back end that honours it sees `GET /smuggled`.
fn cl_te_request(te_lines: &str) -> String {
    let body = cl_te_body();
    format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n{te_lines}\r\n{body}", body.len())
}

/// Checks a request forwarded from a CL+TE one: Transfer-Encoding won (RFC 9112 6.3), the
/// Content-Length is gone and the body is the empty chunked one.
fn assert_chunked_won(case: &Case, req: &Req) {
    let report = case.report();
    assert!(req.values("content-length").is_empty(), "Content-Length forwarded\n{report}");
    assert_eq!(req.values("transfer-encoding"), [b"chunked"], "framing\n{report}");
    assert!(req.body.is_empty(), "body forwarded under the wrong framing\n{report}");
    case.assert_closed();
}

// ---------------------------------------------------------------------------------------
// 1–2. CL.TE and TE.CL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_is_framed_by_transfer_encoding_and_closed() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        cl_te_body().len(),
        cl_te_body()
    );
    let case = Case::run(req, Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"), "{}", case.report());
        assert_chunked_won(&case, &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_cl_is_framed_by_transfer_encoding_and_closed() {
    // Under chunked framing the body is the smuggled request's bytes; under the
    // Content-Length (the size line alone) the smuggled request starts right after it.
    let size_line = format!("{:x}\r\n", SMUGGLED.len());
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n\
         {size_line}{SMUGGLED}\r\n0\r\n\r\n",
        size_line.len()
    );
    let case = Case::run(req, Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        let report = case.report();
        assert!(r.values("content-length").is_empty(), "Content-Length forwarded\n{report}");
        assert_eq!(r.values("transfer-encoding"), [b"chunked"], "framing\n{report}");
        assert_eq!(r.body, SMUGGLED.as_bytes(), "the chunked body, as data\n{report}");
        case.assert_closed();
    }
}

// ---------------------------------------------------------------------------------------
// 3. TE.TE: obfuscated Transfer-Encoding, each with a Content-Length that disagrees.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_unknown_coding_is_refused() {
    let case = Case::run(cl_te_request("Transfer-Encoding: xchunked\r\n"), Stop::AtClose).await;
    // 501 is what RFC 9112 6.1 suggests for a coding the server does not know.
    case.assert_refused(&[400, 501]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_space_before_colon_is_refused() {
    let case = Case::run(cl_te_request("Transfer-Encoding : chunked\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_chunked_not_last_is_refused() {
    let case =
        Case::run(cl_te_request("Transfer-Encoding: chunked, identity\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_tab_before_value_is_chunked_or_refused() {
    // A tab is valid whitespace before a value: chunked framing, so the CL+TE rules apply.
    let case = Case::run(cl_te_request("Transfer-Encoding:\tchunked\r\n"), Stop::AtClose).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        assert_chunked_won(&case, &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_duplicate_headers_are_refused() {
    let case = Case::run(
        cl_te_request("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
        Stop::AtClose,
    )
    .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_obfuscated_by_obs_fold_is_refused() {
    let case =
        Case::run(cl_te_request("Transfer-Encoding: x\r\n chunked\r\n"), Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_in_http_1_0_is_refused() {
    // HTTP/1.0 has no chunked coding: a 1.0 server frames this by its Content-Length.
    let body = cl_te_body();
    let req = format!(
        "POST / HTTP/1.0\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {body}",
        body.len()
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_refused(&[400]);
}

// ---------------------------------------------------------------------------------------
// 4. Duplicate and conflicting Content-Length.

/// A POST whose first 5 body bytes are `hello`, followed by the smuggled request: one
/// message under a length covering everything, two under `Content-Length: 5`.
fn hello_then_smuggled(cl_lines: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{cl_lines}\r\nhello{SMUGGLED}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_conflicting_lines_are_refused() {
    let all = 5 + SMUGGLED.len();
    let case = Case::run(
        hello_then_smuggled(&format!("Content-Length: 5\r\nContent-Length: {all}\r\n")),
        Stop::AtClose,
    )
    .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_conflicting_list_is_refused() {
    let all = 5 + SMUGGLED.len();
    let case =
        Case::run(hello_then_smuggled(&format!("Content-Length: 5, {all}\r\n")), Stop::AtClose)
            .await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_duplicate_same_value_is_forwarded_once_or_refused() {
    for cl_lines in ["Content-Length: 5\r\nContent-Length: 5\r\n", "Content-Length: 5, 5\r\n"] {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\n{cl_lines}Connection: close\r\n\r\nhello");
        let case = Case::run(req, Stop::AtClose).await;
        if let Some(r) = case.assert_refused_or_forwarded_once() {
            let report = case.report();
            assert_eq!(r.values("content-length"), [b"5"], "one plain Content-Length\n{report}");
            assert_eq!(r.body, b"hello", "{report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_not_a_plain_number_is_refused() {
    // Each is 5 to a lenient parser (atoi, strtol with a base prefix, a float parse).
    for v in ["+5", "05x", "5 5", "0x5", "5.0", "-5"] {
        let case =
            Case::run(hello_then_smuggled(&format!("Content-Length: {v}\r\n")), Stop::AtClose)
                .await;
        case.assert_refused(&[400]);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Bare LF line ends.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_the_head_is_normalised_or_refused() {
    // The backend's strict parse refuses any bare LF in a head it receives.
    for req in ["GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n"] {
        let case = Case::run(req, Stop::AfterOneAnswer).await;
        if let Some(r) = case.assert_refused_or_forwarded_once() {
            let report = case.report();
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/"), "{report}");
            assert!(r.body.is_empty(), "{report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_chunked_framing_is_not_delivered() {
    // To a parser taking LF for CRLF the body is `hello` and `GET /smuggled` comes next.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

// ---------------------------------------------------------------------------------------
// 6. obs-fold.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_is_refused_or_unfolded() {
    let req = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n";
    let case = Case::run(req, Stop::AfterOneAnswer).await;
    if let Some(r) = case.assert_refused_or_forwarded_once() {
        // The backend's httparse refuses a folded line, so reaching here means one line.
        let report = case.report();
        assert_eq!(r.values("x-a").len(), 1, "{report}");
        assert!(!r.headers.iter().any(|(n, _)| n.starts_with([' ', '\t'])), "{report}");
    }
}

// ---------------------------------------------------------------------------------------
// 7. Chunk sizes past 64 bits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunk_size_is_not_delivered() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         ffffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_wrapping_to_small_is_not_delivered() {
    // 0x1_0000_0000_0000_0005 is 5 to a parser that wraps at 64 bits: `hello`, the last
    // chunk, and `GET /smuggled` as the next request.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         10000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    );
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_not_delivered();
}

// ---------------------------------------------------------------------------------------
// 8. Bytes that are not token characters in header names.

async fn header_name_refused(line: &[u8]) {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    req.extend_from_slice(line);
    req.extend_from_slice(b"\r\n\r\n");
    let case = Case::run(req, Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_header_name_is_refused() {
    header_name_refused(b"X\0A: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_in_header_name_is_refused() {
    header_name_refused(b"X A: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_byte_in_header_name_is_refused() {
    header_name_refused(b"X\x01: 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separator_in_header_name_is_refused() {
    header_name_refused(b"X(a): 1").await;
}

// ---------------------------------------------------------------------------------------
// 9. The request line.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_request_path_is_refused() {
    let case = Case::run(b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n", Stop::AtClose).await;
    case.assert_refused(&[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_in_request_path_is_refused() {
    let case = Case::run(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Stop::AtClose).await;
    case.assert_refused(&[400]);
}

// ---------------------------------------------------------------------------------------
// The harness itself: a backend parse that guesses would make every test above vacuous.

#[test]
fn the_backend_parser_refuses_what_it_would_have_to_guess_at() {
    let ok =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (r, used) = parse_request(ok).unwrap().unwrap();
    assert_eq!((r.body.as_slice(), used), (&b"hello"[..], ok.len()));
    let two = format!("GET / HTTP/1.1\r\nHost: a\r\n\r\n{SMUGGLED}");
    let (_, used) = parse_request(two.as_bytes()).unwrap().unwrap();
    let (r, _) = parse_request(&two.as_bytes()[used..]).unwrap().unwrap();
    assert_eq!(r.path, "/smuggled");
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: x, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n",
    ] {
        assert!(parse_request(bad).is_err(), "accepted {}", bad.escape_ascii());
    }
    assert_eq!(statuses(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"), [400]);
    assert_eq!(statuses(&[OK, OK].concat()), [200, 200]);
    assert!(statuses(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no").is_empty());
}
