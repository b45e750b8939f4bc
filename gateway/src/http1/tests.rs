use super::*;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Bytes, Frame};
use hyper::header::{self, HeaderValue};
use tokio::io::{AsyncReadExt, duplex};

use engine_proxy::upstream::BoxError;

use super::body::Decoder;
use super::head::parse;
use engine_proxy::chunked::{Chunk, MAX_CHUNK_LINE, Step};

fn head(text: &str) -> Result<Option<Head>, Rejection> {
    parse(&mut BytesMut::from(text.as_bytes()), 16 * 1024)
}

fn refused(text: &str) -> (Option<StatusCode>, String) {
    match head(text) {
        Err(r) => (r.status, r.why),
        Ok(h) => panic!("{text:?} was accepted: {:?}", h.map(|h| h.framing)),
    }
}

#[test]
fn a_head_is_taken_off_the_buffer_and_its_values_share_the_bytes() {
    let mut buf =
        BytesMut::from(&b"GET /api01rv2/patientgetv2?id=1 HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\nNEXT"[..]);
    let head = parse(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(&buf[..], b"NEXT", "the rest stays for the next read");
    assert_eq!(head.request.method(), Method::GET);
    assert_eq!(head.request.uri().path(), "/api01rv2/patientgetv2");
    assert_eq!(head.request.uri().query(), Some("id=1"));
    assert_eq!(head.request.headers()["x-a"], "b");
    assert_eq!(head.framing, Framing::Length(0));
    assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
}

#[test]
fn every_field_of_a_long_head_is_kept_in_order() {
    // Around the spans kept on the stack (32), up to the most a head may have (100 in all).
    for n in [30, 31, 32, 98] {
        let fields: String = (0..n).map(|i| format!("X-{i}: v{i}\r\n")).collect();
        let head = head(&format!(
            "GET / HTTP/1.1\r\n{fields}Host: h\r\nX-0: again\r\n\r\n"
        ))
        .unwrap()
        .unwrap();
        let headers = head.request.headers();
        assert_eq!(headers.len(), n + 2, "{n} fields");
        for i in 1..n {
            assert_eq!(headers[format!("x-{i}").as_str()], format!("v{i}").as_str());
        }
        let zero: Vec<_> = headers.get_all("x-0").iter().collect();
        assert_eq!(zero, ["v0", "again"], "repeated fields in their order");
        assert_eq!(headers["host"], "h");
    }
}

#[test]
fn a_partial_head_waits_and_a_long_one_is_431() {
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
    assert!(parse(&mut buf, 1024).unwrap().is_none());
    assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nHost: x\r\n", "nothing taken");
    let long = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "a".repeat(2000));
    let Err(r) = parse(&mut BytesMut::from(long.as_bytes()), 1024) else {
        panic!()
    };
    assert_eq!(r.status, Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
    let Err(r) = parse(&mut BytesMut::from(partial.as_bytes()), 1024) else {
        panic!()
    };
    assert_eq!(r.status, Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let (status, _) = refused(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"));
    assert_eq!(status, Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
}

#[test]
fn every_framing_ambiguity_is_refused() {
    let bad = StatusCode::BAD_REQUEST;
    for (text, status, why) in [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            bad,
            "both",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            bad,
            "disagree",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
            bad,
            "disagree",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            bad,
            "malformed Content-Length",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            bad,
            "malformed",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            StatusCode::NOT_IMPLEMENTED,
            "other than chunked",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
            StatusCode::NOT_IMPLEMENTED,
            "other than chunked",
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            bad,
            "HTTP/1.0",
        ),
        ("GET / HTTP/1.1\r\n\r\n", bad, "Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", bad, "Host"),
        (
            "CONNECT engine:443 HTTP/1.1\r\nHost: engine:443\r\n\r\n",
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT",
        ),
        ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", bad, "target"),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
            bad,
            "malformed",
        ),
    ] {
        let (s, w) = refused(text);
        assert_eq!(s, Some(status), "{text:?}: {w}");
        assert!(w.contains(why), "{text:?}: {w}");
    }
}

#[test]
fn framing_and_connection_semantics() {
    let h = head("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7, 7\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Length(7));
    let h = head("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    assert!(h.expect_continue);
    let h = head("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);
    let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive, "HTTP/1.0 is served one request per connection");
    let h = head("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.upgrade);
    let h = head("GET http://engine/api01rv2/x HTTP/1.1\r\nHost: engine\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.request.uri().path(), "/api01rv2/x", "absolute form");
}

/// Decodes `wire` fed in pieces of `step` bytes, as reads would deliver it.
fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut decoder = Decoder::Chunked(Chunk::Size);
    let (mut buf, mut out, mut fed) = (BytesMut::new(), Vec::new(), 0);
    loop {
        match decoder.decode(&mut buf)? {
            Step::Data(d) => out.extend_from_slice(&d),
            Step::Done => return Ok((out, buf.to_vec())),
            Step::More if fed == wire.len() => return Err("ran out"),
            Step::More => {
                let n = step.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_reads_and_bad_ones_are_refused() {
    let wire = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET";
    for step in [1, 2, 3, 7, 100] {
        let (body, rest) = dechunk(wire, step).unwrap();
        assert_eq!(body, b"hello world", "step {step}");
        assert!(b"GET".starts_with(&rest), "the next request stays: {rest:?}");
    }
    for bad in [
        &b"zz\r\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"-5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
    ] {
        assert!(dechunk(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long_line = format!("5;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
    assert_eq!(
        dechunk(long_line.as_bytes(), 100),
        Err("chunk size line too long")
    );
}

/// Echoes what it got: the target and the body's length; `/unsized` answers with a body whose
/// length is not known in advance; `/slow-body` refuses without reading its body.
struct Echo;

struct Unsized(Option<Bytes>);

impl HttpBody for Unsized {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }
}

impl Service for Echo {
    async fn call(&self, req: Request<Body>) -> Response<ProxyBody> {
        let target = req.uri().to_string();
        if target == "/refuse" {
            let mut r = Response::new(Full::new(Bytes::from("no\n")).map_err(|e| match e {}).boxed());
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let text = match body {
            Ok(b) => format!("{target} {}", b.len()),
            Err(e) => format!("{target} error {e}"),
        };
        if target == "/unsized" {
            return Response::new(Unsized(Some(text.into())).boxed());
        }
        Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
    }

    fn rejected(&self, _: StatusCode, _: &str) {}
}

/// A connection served by `service`: the client's end, and the server's task.
fn connect<V: Service + Send + Sync + 'static>(
    service: V,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    connect_with(service, Duration::from_secs(5))
}

/// [`connect`] with its header timeout.
fn connect_with<V: Service + Send + Sync + 'static>(
    service: V,
    header_timeout: Duration,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = duplex(1 << 20);
    let (stop, stopping) = watch::channel(false);
    let limits = Limits {
        header_timeout,
        max_header_bytes: 16 * 1024,
    };
    let served = tokio::spawn(async move {
        serve(server, service, limits, stopping).await;
        drop(stop);
    });
    (client, served)
}

/// Writes `input` to a connection served by [`Echo`], closes the write side, returns all the
/// server wrote.
async fn exchange_bytes(input: &[u8]) -> String {
    let (mut client, served) = connect(Echo);
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    served.await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_their_framing() {
    let out = exchange_bytes(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
          GET /unsized HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /e HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
          GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 6, "{out}");
    assert!(answers[0].starts_with("200 OK\r\n") && answers[0].contains("content-length: 4\r\n"));
    assert!(
        answers[0].contains("\r\ndate: ") && answers[0].ends_with("\r\n\r\n/a 0"),
        "{}",
        answers[0]
    );
    assert!(answers[1].ends_with("/b 3"), "{}", answers[1]);
    assert!(answers[2].ends_with("/c 5"), "{}", answers[2]);
    assert!(
        answers[3].contains("transfer-encoding: chunked\r\n"),
        "{}",
        answers[3]
    );
    assert!(
        answers[3].ends_with("\r\n\r\na\r\n/unsized 0\r\n0\r\n\r\n"),
        "{}",
        answers[3]
    );
    assert!(
        answers[4].contains("content-length: 0") || !answers[4].contains("/e"),
        "{}",
        answers[4]
    );
    assert!(answers[4].ends_with("\r\n\r\n"), "HEAD: no body: {}", answers[4]);
    assert!(answers[5].contains("connection: close\r\n") && answers[5].ends_with("/f 0"));
    assert!(!out.contains("/never"), "nothing after Connection: close");
}

#[tokio::test]
async fn bad_requests_get_their_status_and_the_connection_closes() {
    let out = exchange_bytes(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET /a HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.contains("connection: close\r\n") && out.contains("disagree"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");

    let out =
        exchange_bytes(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").await;
    assert!(
        out.contains("/c error malformed chunk size"),
        "the service sees the body fail: {out}"
    );
    assert!(
        out.contains("connection: close"),
        "and the connection ends: {out}"
    );

    let out = exchange_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert_eq!(out, "", "a head cut short by the client: nobody to answer");
}

#[tokio::test]
async fn expect_continue_is_answered_only_when_the_body_is_wanted() {
    let out = exchange_bytes(
        b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 401"), "refused before any 100: {out}");
    assert!(
        out.contains("connection: close"),
        "its body was never read: {out}"
    );

    let (mut client, served) = connect(Echo);
    client
        .write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 25];
    client.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(&vec![b'x'; 70000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.ends_with("/up 70000"),
        "{out}"
    );
    served.await.unwrap();
}

#[tokio::test]
async fn an_upgrade_hands_over_the_stream_with_the_bytes_already_read() {
    struct Switch;
    impl Service for Switch {
        fn call(&self, mut req: Request<Body>) -> impl Future<Output = Response<ProxyBody>> + Send {
            let on = req.extensions_mut().remove::<OnUpgrade>();
            async move {
                let on = on.expect("an upgrade request carries its OnUpgrade");
                tokio::spawn(async move {
                    let mut io = on.await.expect("upgraded");
                    let mut first = [0u8; 5];
                    io.read_exact(&mut first).await.unwrap();
                    io.write_all(&first).await.unwrap();
                });
                let mut r = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
                *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                r.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                r
            }
        }
        fn rejected(&self, _: StatusCode, _: &str) {}
    }
    let (mut client, _served) = connect(Switch);
    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello")
        .await
        .unwrap();
    let mut out = vec![0u8; 4096];
    let mut got = String::new();
    while !got.ends_with("hello") {
        let n = client.read(&mut out).await.unwrap();
        assert!(n > 0, "{got}");
        got.push_str(std::str::from_utf8(&out[..n]).unwrap());
    }
    assert!(got.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{got}");
    assert!(
        got.contains("connection: upgrade\r\n") && got.contains("upgrade: websocket\r\n"),
        "{got}"
    );
    assert!(!got.contains("content-length"), "{got}");
}

/// Found by the `h1_differential` target's seed corpus: the URI parser drops a fragment, so the stages saw
/// `/a` for a request that named `/a#b`; RFC 9112 has no fragment in a request target.
#[test]
fn a_fragment_in_the_target_is_refused() {
    for text in [
        "GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api01rv2/patientgetv2?id=1#x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://x/a#/orca11 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let (status, why) = refused(text);
        assert_eq!(status, Some(StatusCode::BAD_REQUEST), "{text:?}");
        assert!(why.contains("fragment"), "{text:?}: {why}");
    }
}

/// Found by the `h1_differential` fuzz target: raw UTF-8 in the target went on to the stages, where
/// RFC 3986 has only ASCII (anything else percent-encoded).
#[test]
fn a_target_is_visible_ascii() {
    let (status, why) = refused("GET /api01rv2\u{20f}atientgetv2?id=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, Some(StatusCode::BAD_REQUEST));
    assert!(why.contains("visible ASCII"), "{why}");
    assert!(head("GET /api01rv2/x?name=%E6%97%A5 HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
}

/// A disagreement with the `h1_differential` reference (found by reading, before the runs): an absolute-form target of any scheme was taken,
/// and its authority went on to the stages beside the Host header.
#[test]
fn an_absolute_form_target_is_an_http_url_and_only_its_path_goes_on() {
    let h = head("GET https://engine:443/api01rv2/x?y=1 HTTP/1.1\r\nHost: engine\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(h.request.uri(), "/api01rv2/x?y=1");
    assert!(h.request.uri().authority().is_none());
    for text in [
        "GET foo://engine/api01rv2/x HTTP/1.1\r\nHost: engine\r\n\r\n",
        "GET file:///etc/passwd HTTP/1.1\r\nHost: engine\r\n\r\n",
        "GET engine:443 HTTP/1.1\r\nHost: engine\r\n\r\n",
        "GET http://user@engine/api01rv2/x HTTP/1.1\r\nHost: engine\r\n\r\n",
    ] {
        let (status, why) = refused(text);
        assert_eq!(status, Some(StatusCode::BAD_REQUEST), "{text:?}");
        assert!(why.contains("target"), "{text:?}: {why}");
    }
}

/// A disagreement with the `h1_differential` reference (found by reading, before the runs): anything after a `;` passed as chunk extensions,
/// and any line as a trailer field, where RFC 9112 §7.1 has a grammar for both. A server behind
/// the gateway that reads them differently frames the body differently.
#[test]
fn chunk_extensions_and_trailer_fields_follow_their_grammar() {
    for good in [
        &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=b;c=\"q \\\" ;\"\r\nhello\r\n0;z\r\nX-T: v a\r\nY:\r\n\r\n",
    ] {
        for step in [1, 3, 100] {
            let (body, _) = dechunk(good, step).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(body, b"hello");
        }
    }
    for bad in [
        &b"5;\r\nhello\r\n0\r\n\r\n"[..],
        b"5;=x\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"open\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        b"5 ;a\r\nhello\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
        b"5\r\nhello\r\n0\r\n: no name\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX: bad\x01value\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX : v\r\n\r\n",
    ] {
        assert!(dechunk(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

/// The connection's one timer: each request's head gets the whole timeout from when the wait for
/// it began, however long the connection has been open; idle past it, the connection closes;
/// a head begun and not finished within it is 408.
#[tokio::test]
async fn the_header_timeout_runs_from_each_head_and_the_connection_outlives_it() {
    let timeout = Duration::from_millis(500);
    let (mut client, served) = connect_with(Echo, timeout);
    let started = std::time::Instant::now();
    let mut buf = vec![0; 4096];
    let mut answered = started;
    for i in 0..6 {
        client
            .write_all(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let n = client.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.ends_with(&format!("/{i} 0")), "request {i}: {answer}");
        answered = std::time::Instant::now();
        tokio::time::sleep(timeout / 3).await;
    }
    assert!(
        started.elapsed() > 2 * timeout,
        "the connection outlived its first timeout"
    );
    let n = tokio::time::timeout(4 * timeout, client.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0))), "idle past the timeout: closed, {n:?}");
    let idle = answered.elapsed();
    assert!(idle >= timeout, "closed {idle:?} after the last answer");
    served.await.unwrap();

    let (mut client, served) = connect_with(Echo, timeout);
    tokio::time::sleep(timeout * 2 / 3).await;
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let begun = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(4 * timeout, client.read_to_end(&mut out))
        .await
        .expect("a stalled head is answered")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(
        begun.elapsed() < timeout,
        "the head's wait began with the connection"
    );
    served.await.unwrap();
}

/// The shutdown closes an idle keep-alive connection at once, however many times its task was
/// woken (by requests) since it began to wait for it, and a connection mid-request finishes it.
#[tokio::test]
async fn the_shutdown_closes_an_idle_connection_after_many_requests() {
    let (mut client, server) = duplex(1 << 20);
    let (stop, stopping) = watch::channel(false);
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        max_header_bytes: 16 * 1024,
    };
    let served = tokio::spawn(serve(server, Echo, limits, stopping));
    let mut answer = vec![0; 4096];
    for _ in 0..20 {
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = client.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..n])
        );
    }
    // Half a request: not idle, so the shutdown waits for it.
    client.write_all(b"GET /b HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!served.is_finished(), "a request in flight is finished first");
    client.write_all(b"Host: x\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("closed after the answer")
        .unwrap();
    let rest = String::from_utf8_lossy(&rest).to_ascii_lowercase();
    assert!(
        rest.starts_with("http/1.1 200") && rest.contains("\r\nconnection: close\r\n"),
        "{rest:?}"
    );
    served.await.unwrap();

    // Idle after a request: closed as soon as the shutdown begins.
    let (mut client, server) = duplex(1 << 20);
    let (stop, stopping) = watch::channel(false);
    let served = tokio::spawn(serve(server, Echo, limits, stopping));
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = client.read(&mut answer).await.unwrap();
    stop.send(true).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("an idle connection closes at the shutdown")
        .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    served.await.unwrap();
}
