//! Unit tests of `probe.rs`: every probe kind against scripted servers, the HTTP response
//! reader on malformed, split and oversized answers, and the TLS handshake.

use super::*;
use tokio::net::TcpListener;

/// A probe without TLS, as most tests want.
async fn probe(kind: &HealthKind, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    super::probe(kind, addr, timeout, None).await
}

const T: Duration = Duration::from_millis(500);

fn http_check(status: (u16, u16), body: Option<&str>) -> HealthKind {
    HealthKind::Http { path: "/health".into(), host: None, status, body: body.map(str::to_string) }
}

fn send_expect_check(send: &str, expect: &str) -> HealthKind {
    HealthKind::SendExpect { send: send.into(), expect: expect.into() }
}

/// A server that answers each connection with `answer` after reading what the client
/// sent (up to the end of an HTTP head, or 64 bytes), then closes. Returns its address
/// and a receiver of the requests it saw.
async fn answering(answer: Vec<u8>) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let answer = answer.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") && req.len() < 64 {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                    if !req.starts_with(b"GET ") {
                        break;
                    }
                }
                let _ = tx.send(req);
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// A port nothing listens on.
fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn tcp_ok_and_refused() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(probe(&HealthKind::Tcp, l.local_addr().unwrap(), T).await, Ok(()));
    assert_eq!(probe(&HealthKind::Tcp, refused_addr(), T).await, Err("connect refused".into()));
    let e = probe(&http_check((200, 399), None), refused_addr(), T).await;
    assert_eq!(e, Err("connect refused".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_200_passes_and_sends_a_proper_request() {
    let (addr, mut seen) =
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    assert_eq!(probe(&http_check((200, 399), Some("ok")), addr, T).await, Ok(()));
    let req = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    assert!(req.contains("\r\nUser-Agent: fulcrum-health\r\n"), "{req}");
}

#[tokio::test(flavor = "current_thread")]
async fn http_uses_the_configured_host() {
    let (addr, mut seen) = answering(b"HTTP/1.0 204 No Content\r\n\r\n".to_vec()).await;
    let kind = HealthKind::Http {
        path: "/".into(),
        host: Some("app.example".into()),
        status: (200, 299),
        body: None,
    };
    assert_eq!(probe(&kind, addr, T).await, Ok(()));
    let req = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(req.contains("\r\nHost: app.example\r\n"), "{req}");
}

#[tokio::test(flavor = "current_thread")]
async fn http_500_fails_with_the_status() {
    let (addr, _seen) =
        answering(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec())
            .await;
    let e = probe(&http_check((200, 399), None), addr, T).await;
    assert_eq!(e, Err("status 500 not in 200-399".into()));
    let e = probe(&http_check((200, 200), None), addr, T).await;
    assert_eq!(e, Err("status 500 is not 200".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_wrong_body_fails() {
    let (addr, _seen) =
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting".to_vec()).await;
    let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
    assert_eq!(e, Err("body does not contain \"ok\"".into()));
    // Without a body expectation the status alone decides.
    assert_eq!(probe(&http_check((200, 399), None), addr, T).await, Ok(()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_body_only_counts_within_content_length() {
    let (addr, _seen) =
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot ok".to_vec()).await;
    let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
    assert_eq!(e, Err("body does not contain \"ok\"".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_chunked_body_is_decoded() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nall\r\n4;x=y\r\n is \r\n2\r\nok\r\n0\r\n\r\n";
    let (addr, _seen) = answering(answer.to_vec()).await;
    assert_eq!(probe(&http_check((200, 399), Some("all is ok")), addr, T).await, Ok(()));
    // The framing bytes are not part of the body: "ok\r\n0" spans them.
    let e = probe(&http_check((200, 399), Some("ok\r\n0")), addr, T).await;
    assert_eq!(e, Err("body does not contain \"ok\\r\\n0\"".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_body_until_close() {
    let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\n\r\nstatus: ok\n".to_vec()).await;
    assert_eq!(probe(&http_check((200, 399), Some("ok")), addr, T).await, Ok(()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_garbage_fails_without_panicking() {
    for answer in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"\r\n\r\n",
        b"\xff\xfe\x00garbage",
    ] {
        let (addr, _seen) = answering(answer.to_vec()).await;
        let r = probe(&http_check((200, 399), Some("ok")), addr, T).await;
        assert!(r.is_err(), "{:?} was accepted", String::from_utf8_lossy(answer));
    }
    let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()).await;
    let e = probe(&http_check((200, 399), None), addr, T).await;
    assert_eq!(e, Err("connection closed in the response head".into()));
    let (addr, _seen) = answering(Vec::new()).await;
    let e = probe(&http_check((200, 399), None), addr, T).await;
    assert_eq!(e, Err("connection closed without an answer".into()));
    let bad_chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n";
    let (addr, _seen) = answering(bad_chunks.to_vec()).await;
    let e = probe(&http_check((200, 399), Some("ok")), addr, T).await;
    assert_eq!(e, Err("malformed chunked body".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_reads_at_most_64_kib() {
    // A head that never ends: the probe gives up at the limit, before the timeout.
    let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 200 * 1024));
    let (addr, _seen) = answering(endless).await;
    let e = probe(&http_check((200, 399), None), addr, Duration::from_secs(5)).await;
    assert_eq!(e, Err("response head larger than 64 KiB".into()));
    // A body without the wanted text, longer than the limit.
    let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'b', 200 * 1024));
    let (addr, _seen) = answering(big).await;
    let e = probe(&http_check((200, 399), Some("ok")), addr, Duration::from_secs(5)).await;
    assert_eq!(e, Err("body does not contain \"ok\" (in the first 64 KiB)".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_rejects_a_host_that_would_inject_headers() {
    let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()).await;
    let kind = HealthKind::Http {
        path: "/".into(),
        host: Some("a\r\nX-Evil: 1".into()),
        status: (200, 399),
        body: None,
    };
    assert!(probe(&kind, addr, T).await.unwrap_err().starts_with("invalid Host"));
}

#[tokio::test(flavor = "current_thread")]
async fn send_expect_right_prefix_passes() {
    let (addr, mut seen) = answering(b"+PONG\r\nand more".to_vec()).await;
    assert_eq!(probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await, Ok(()));
    assert_eq!(seen.recv().await.unwrap(), b"PING\r\n");
}

#[tokio::test(flavor = "current_thread")]
async fn send_expect_wrong_answer_fails() {
    let (addr, _seen) = answering(b"-ERR unknown command\r\n".to_vec()).await;
    let e = probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await;
    assert_eq!(e, Err("answer does not start with \"+PONG\" (got \"-ERR \")".into()));
    // A short answer followed by EOF is a wrong answer too.
    let (addr, _seen) = answering(b"+PO".to_vec()).await;
    let e = probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await;
    assert_eq!(e, Err("answer does not start with \"+PONG\" (got \"+PO\")".into()));
    let (addr, _seen) = answering(b"\x00\xff\x13garbage".to_vec()).await;
    assert!(probe(&send_expect_check("PING\r\n", "+PONG"), addr, T).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn silent_server_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Accepts and holds connections, never writes.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let t = Duration::from_millis(100);
    for kind in [http_check((200, 399), None), send_expect_check("PING\r\n", "+PONG")] {
        let started = std::time::Instant::now();
        assert_eq!(probe(&kind, addr, t).await, Err("timeout waiting for the answer".into()));
        let took = started.elapsed();
        assert!(took >= t && took < t + Duration::from_millis(400), "took {took:?}");
    }
    holder.abort();
}

/// Runs `http` over an in-memory pipe that carries at most `piece` bytes per read, with
/// a peer that reads the request head and then writes `answer` and closes.
async fn http_in_pieces(
    answer: &[u8],
    piece: usize,
    want_body: Option<&str>,
) -> Result<(), String> {
    let (mut ours, mut theirs) = tokio::io::duplex(piece);
    let answer = answer.to_vec();
    let peer = tokio::spawn(async move {
        let mut req = Vec::new();
        let mut b = [0u8; 64];
        while !req.ends_with(b"\r\n\r\n") {
            match theirs.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&b[..n]),
            }
        }
        let _ = theirs.write_all(&answer).await;
    });
    let addr: SocketAddr = ([127, 0, 0, 1], 80).into();
    let exchange = http(&mut ours, addr, "/", None, (200, 399), want_body);
    let r = tokio::time::timeout(Duration::from_secs(5), exchange).await;
    // Closing our end ends a peer still writing what the probe did not need.
    drop(ours);
    peer.await.unwrap();
    r.unwrap_or_else(|_| Err("test deadline".into()))
}

#[tokio::test(flavor = "current_thread")]
async fn http_response_split_across_many_reads() {
    let length = &b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 9\r\n\r\nall is ok"[..];
    let chunked = &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\nall \r\n5;x=y\r\nis ok\r\n0\r\n\r\n"[..];
    let until_close = &b"HTTP/1.0 200 OK\r\n\r\nall is ok"[..];
    for piece in [1, 2, 3, 7, 64] {
        for answer in [length, chunked, until_close] {
            let r = http_in_pieces(answer, piece, Some("all is ok")).await;
            assert_eq!(r, Ok(()), "{piece}-byte reads of {:?}", String::from_utf8_lossy(answer));
            let r = http_in_pieces(answer, piece, Some("not there")).await;
            assert_eq!(r, Err("body does not contain \"not there\"".into()), "{piece}");
        }
        let r = http_in_pieces(b"HTTP/1.1 503 Busy\r\n\r\n", piece, None).await;
        assert_eq!(r, Err("status 503 not in 200-399".into()));
        let r = http_in_pieces(b"HTTP/1.1 200 OK\r\nServer", piece, None).await;
        assert_eq!(r, Err("connection closed in the response head".into()));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn http_oversized_head_fails_cleanly() {
    // Well-formed headers, but the blank line that ends the head lies past 64 KiB.
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    big.extend_from_slice(b"X-Pad: ");
    big.extend(std::iter::repeat_n(b'p', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\nok");
    let (addr, _seen) = answering(big).await;
    let e = probe(&http_check((200, 399), None), addr, Duration::from_secs(5)).await;
    assert_eq!(e, Err("response head larger than 64 KiB".into()));
    // Too many header lines in a small head.
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for _ in 0..200 {
        many.extend_from_slice(b"X: y\r\n");
    }
    many.extend_from_slice(b"\r\n");
    let (addr, _seen) = answering(many).await;
    let e = probe(&http_check((200, 399), None), addr, T).await;
    assert_eq!(e, Err("more than 100 headers in the response".into()));
}

#[tokio::test(flavor = "current_thread")]
async fn http_invalid_status_line_fails_with_a_reason() {
    for (answer, reason) in [
        (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], "invalid status line in the response"),
        (b"HTTP/1.1 99 OK\r\n\r\n", "invalid status line in the response"),
        (b"HTTP/1.1 000 Zero\r\n\r\n", "invalid status code 000 in the response"),
        (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x response"),
    ] {
        let (addr, _seen) = answering(answer.to_vec()).await;
        let e = probe(&http_check((200, 399), None), addr, T).await;
        assert_eq!(e, Err(reason.into()), "{:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn partial_head_then_silence_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Sends half a head, then holds the connection open without another byte.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-").await;
            held.push(s);
        }
    });
    let t = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let e = probe(&http_check((200, 399), None), addr, t).await;
    assert_eq!(e, Err("timeout waiting for the answer".into()));
    let took = started.elapsed();
    assert!(took >= t && took < t + Duration::from_millis(400), "took {took:?}");
    holder.abort();
}

#[test]
fn status_lines() {
    let status = |line: &[u8]| parse_head(&[line, b"\r\n\r\n"].concat());
    assert_eq!(status(b"HTTP/1.1 200 OK").map(|h| h.map(|h| h.status)), Ok(Some(200)));
    assert_eq!(status(b"HTTP/1.0 404").map(|h| h.map(|h| h.status)), Ok(Some(404)));
    assert_eq!(status(b"HTTP/1.1 503 ").map(|h| h.map(|h| h.status)), Ok(Some(503)));
    for bad in [
        &b"HTTP/1.1"[..],
        b"HTTP/1.1 ",
        b"HTTP/1.1 20",
        b"HTTP/1.1 2000",
        b"HTTP/1.1 099 x",
        b"HTTP/1.x 200",
        b"HTTP/1.2 200",
        b"HTTP/1.1  200",
        b"HTTP/1.1 +20",
        b"http/1.1 200",
    ] {
        assert!(status(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    // Blank lines before the status line are skipped (RFC 9112 §2.2), so blank lines
    // alone are an unfinished head, which fails when the connection closes.
    assert_eq!(status(b""), Ok(None));
}

#[test]
fn invalid_heads_have_clear_reasons() {
    for (answer, reason) in [
        (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "not an HTTP/1.x response"),
        (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid status line in the response"),
        (b"HTTP/1.1 200OK\r\n\r\n", "invalid status line in the response"),
        (b"HTTP/1.1 099 Low\r\n\r\n", "invalid status code 099 in the response"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response head: invalid header name"),
        (b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", "malformed response head: invalid header value"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "invalid Content-Length in the response",
        ),
    ] {
        assert_eq!(parse_head(answer), Err(reason.into()), "{:?}", String::from_utf8_lossy(answer));
    }
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse_head(&many), Err("more than 100 headers in the response".into()));
}

#[test]
fn every_prefix_of_a_head_is_unfinished() {
    let full = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\n";
    for n in 0..full.len() {
        assert_eq!(parse_head(&full[..n]), Ok(None), "prefix {n}");
    }
    let h = parse_head(full).unwrap().unwrap();
    assert_eq!((h.status, h.len, h.framing), (200, full.len(), Framing::Length(2)));
}

#[test]
fn heads() {
    assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Ok(None));
    assert_eq!(parse_head(b"HTTP/1."), Ok(None));
    assert_eq!(parse_head(b"HTT"), Ok(None));
    assert!(parse_head(b"HTX").is_err());
    let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length:  12 \r\n\r\nbody").unwrap();
    assert_eq!(h, Some(Head { status: 200, len: 41, framing: Framing::Length(12) }));
    let h = parse_head(b"HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\nContent-Length: 5\n\n");
    assert_eq!(h.unwrap().map(|h| h.framing), Some(Framing::Chunked));
    let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    assert!(h.is_err());
}

#[test]
fn chunked_decoding_in_pieces() {
    let full = b"5\r\nhello\r\n1;ext\r\n!\r\n0\r\n\r\n";
    assert_eq!(decode_chunked(full), Ok((b"hello!".to_vec(), true)));
    // Every prefix decodes to a prefix of the body without error.
    for n in 0..full.len() {
        let (data, done) = decode_chunked(&full[..n]).unwrap();
        assert!(b"hello!".starts_with(&data), "prefix {n}: {data:?}");
        assert!(!done || n >= full.len() - 2, "prefix {n} claims completion");
    }
    assert!(decode_chunked(b"5\r\nhelloXX").is_err());
    assert!(decode_chunked(b"fffffffffffffffff\r\n").is_err());
    assert!(decode_chunked(b"\r\n").is_err());
}

#[test]
fn substring_search() {
    assert!(contains(b"abc", b""));
    assert!(contains(b"abc", b"bc"));
    assert!(!contains(b"ab", b"abc"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_tls_probe_of_a_server_that_does_not_speak_tls_fails_in_the_handshake() {
    let t = fulcrum_config::PoolTls {
        ca: None,
        server_name: None,
        verify: false,
        client_cert: None,
        alpn: Vec::new(),
    };
    let tls = crate::upstream_tls::TlsRegistry::default().get("p", &t).unwrap();
    let (addr, _seen) = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
    let probe_tls = ProbeTls {
        connector: tls.connector(crate::upstream_tls::Alpn::H1).clone(),
        name: rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    for kind in [HealthKind::Tcp, http_check((200, 399), None)] {
        let e = super::probe(&kind, addr, T, Some(&probe_tls)).await.unwrap_err();
        assert!(e.starts_with("TLS handshake failed: "), "{e}");
    }
    // Nothing listening: the connect fails first, as without TLS.
    let e = super::probe(&HealthKind::Tcp, refused_addr(), T, Some(&probe_tls)).await;
    assert_eq!(e, Err("connect refused".into()));
}
