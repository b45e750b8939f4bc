//! The client against a scripted engine on a real socket: framing both ways, the pool, the
//! retry of a request a pooled connection lost, and protocol errors.

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame};
use hyper::{HeaderMap, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::upstream::{BoxError, ProxyBody};

/// An engine on a loopback port: the n-th connection it accepts answers its requests with the
/// answers of `script[n]`, in order, then closes. Every request it reads, head and body as
/// sent, goes to the returned channel.
pub(crate) async fn engine(script: Vec<Vec<&'static str>>) -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for answers in script {
            let (mut socket, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for answer in answers {
                    let Some(request) = read_request(&mut socket, &mut buf).await else {
                        return;
                    };
                    let _ = seen.send(request);
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, requests)
}

/// One request off `socket`: its head, and the body its framing says follows.
async fn read_request(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let complete = |buf: &[u8]| {
        let text = String::from_utf8_lossy(buf);
        let end = text.find("\r\n\r\n")? + 4;
        let head = text[..end].to_ascii_lowercase();
        if head.contains("transfer-encoding: chunked") {
            return text[end..].find("0\r\n\r\n").map(|at| end + at + 5);
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        (buf.len() >= end + length).then_some(end + length)
    };
    loop {
        if let Some(n) = complete(buf) {
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            buf.drain(..n);
            return Some(request);
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn client(port: u16) -> Client {
    Client::new("127.0.0.1", port, None, Route::DIRECT, Duration::from_secs(5)).unwrap()
}

pub(crate) fn full(body: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

/// A body of unknown length, in the frames given.
fn frames(frames: [&'static [u8]; 2]) -> ProxyBody {
    let frames = frames.map(|b| Ok::<_, BoxError>(Frame::data(Bytes::from_static(b))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// Sends `method /x` with `body`; the answer's status, fields and whole body.
async fn send(
    client: &Client,
    method: Method,
    body: ProxyBody,
) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri("/ignored")
        .header("host", "engine")
        .header("content-length", "999")
        .body(())
        .unwrap()
        .into_parts();
    let head = Head {
        method: &parts.method,
        target: "/x?y=1",
        fields: &parts.headers,
        upgrade: false,
    };
    let (head, body) = client.send(head, body).await?.into_parts();
    Ok((head.status, head.headers, body.whole().await?))
}

fn pooled(client: &Client) -> usize {
    client.pool.state.lock().unwrap().conns.len()
}

#[tokio::test]
async fn answers_with_a_length_reuse_one_connection() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
    let (port, mut seen) = engine(vec![vec![ok, ok, ok]]).await;
    let client = client(port);
    for _ in 0..3 {
        let (status, headers, body) = send(&client, Method::GET, full("")).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(
            pooled(&client),
            1,
            "the connection is back before the caller reads the body"
        );
    }
    // A GET without a body carries no framing; the terminal's Content-Length is not passed on.
    let request = seen.recv().await.unwrap();
    assert_eq!(request, "GET /x?y=1 HTTP/1.1\r\nhost: engine\r\n\r\n");
}

#[tokio::test]
async fn a_body_of_known_length_goes_with_its_head() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (port, mut seen) = engine(vec![vec![ok, ok]]).await;
    let client = client(port);
    send(&client, Method::POST, full("{\"a\":1}")).await.unwrap();
    let request = seen.recv().await.unwrap();
    assert!(
        request.ends_with("content-length: 7\r\n\r\n{\"a\":1}"),
        "{request}"
    );
    // An empty POST still says so.
    send(&client, Method::POST, full("")).await.unwrap();
    let request = seen.recv().await.unwrap();
    assert!(request.ends_with("content-length: 0\r\n\r\n"), "{request}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked() {
    let ok = "HTTP/1.1 204 No Content\r\n\r\n";
    let (port, mut seen) = engine(vec![vec![ok]]).await;
    let client = client(port);
    let body = frames([b"abc", b"0123456789abcdef!"]);
    let (status, _, body) = send(&client, Method::PUT, body).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let request = seen.recv().await.unwrap();
    assert!(
        request
            .ends_with("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n11\r\n0123456789abcdef!\r\n0\r\n\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn a_chunked_answer_is_decoded_and_its_connection_reused() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (port, _seen) = engine(vec![vec![chunked, chunked]]).await;
    let client = client(port);
    for _ in 0..2 {
        let (_, _, body) = send(&client, Method::GET, full("")).await.unwrap();
        assert_eq!(&body[..], b"Wikipedia");
        assert_eq!(pooled(&client), 1);
    }
}

#[tokio::test]
async fn an_answer_without_a_length_ends_with_the_connection() {
    let close = "HTTP/1.1 200 OK\r\n\r\nuntil the end";
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (port, _seen) = engine(vec![vec![close], vec![ok]]).await;
    let client = client(port);
    let (_, _, body) = send(&client, Method::GET, full("")).await.unwrap();
    assert_eq!(&body[..], b"until the end");
    assert_eq!(pooled(&client), 0, "a connection read to its close is not reused");
    let (_, _, body) = send(&client, Method::GET, full("")).await.unwrap();
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn connection_close_and_http_1_0_are_not_reused() {
    let close = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na";
    let old = "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb";
    let (port, _seen) = engine(vec![vec![close], vec![old]]).await;
    let client = client(port);
    assert_eq!(&send(&client, Method::GET, full("")).await.unwrap().2[..], b"a");
    assert_eq!(pooled(&client), 0);
    assert_eq!(&send(&client, Method::GET, full("")).await.unwrap().2[..], b"b");
    assert_eq!(pooled(&client), 0);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_answers_have_no_body() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
    let (port, _seen) = engine(vec![vec![interim, head]]).await;
    let client = client(port);
    let (status, _, body) = send(&client, Method::POST, full("x")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"ok"[..]));
    let (status, headers, body) = send(&client, Method::HEAD, full("")).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers["content-length"], "1000");
    assert_eq!(pooled(&client), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_engine_closed_is_replaced_for_a_small_request() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    // The first connection answers once and closes; the client still holds it as idle.
    let (port, mut seen) = engine(vec![vec![ok], vec![ok]]).await;
    let client = client(port);
    send(&client, Method::GET, full("")).await.unwrap();
    seen.recv().await.unwrap();
    assert_eq!(pooled(&client), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, _, body) = send(&client, Method::POST, full("again")).await.unwrap();
    assert_eq!(&body[..], b"ok");
    let request = seen.recv().await.unwrap();
    assert!(
        request.ends_with("\r\n\r\nagain"),
        "sent once, on the new connection: {request}"
    );
}

#[tokio::test]
async fn every_field_of_a_long_answer_is_kept_and_too_many_are_refused() {
    // Around the spans kept on the stack (32), up to the most a head may have (100 in all).
    for n in [31, 32, 33, 100, 101] {
        let fields: String = (1..n).map(|i| format!("x-{i}: v{i}\r\n")).collect();
        let answer = format!("HTTP/1.1 200 OK\r\n{fields}content-length: 2\r\n\r\nok");
        let (port, _seen) = engine(vec![vec![answer.leak()]]).await;
        let answer = send(&client(port), Method::GET, full("")).await;
        if n > 100 {
            let e = answer.unwrap_err().to_string();
            assert!(e.contains("malformed head: too many headers"), "{e}");
            continue;
        }
        let (status, headers, body) = answer.unwrap();
        assert_eq!(
            (status, &body[..], headers.len()),
            (StatusCode::OK, &b"ok"[..], n)
        );
        for i in 1..n {
            assert_eq!(headers[format!("x-{i}").as_str()], format!("v{i}").as_str());
        }
    }
}

#[tokio::test]
async fn the_hybrid_state_field_is_read_whatever_its_case() {
    let answer =
        "HTTP/1.1 200 OK\r\nX-HybridMode: emergency\r\nx-hybridmodes: no\r\ncontent-length: 0\r\n\r\n";
    let (port, _seen) = engine(vec![vec![answer]]).await;
    let (_, headers, _) = send(&client(port), Method::GET, full("")).await.unwrap();
    assert_eq!(headers[crate::fields::HYBRID_MODE], "emergency");
    assert_eq!(headers["x-hybridmodes"], "no", "a longer name is its own");
    assert_eq!(headers.len(), 3);
}

#[tokio::test]
async fn bad_answers_are_named() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            "Content-Length values that disagree",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "malformed Content-Length",
        ),
        ("HTTP/1.1 2000 OK\r\n\r\n", "malformed head"),
        ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "asked for no upgrade"),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "malformed chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            "closed the connection in the middle of an answer",
        ),
    ];
    for (answer, why) in cases {
        let (port, _seen) = engine(vec![vec![answer]]).await;
        let client = client(port);
        let e = send(&client, Method::GET, full(""))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{answer:?}: {e}");
        assert_eq!(pooled(&client), 0);
    }
    // Read, then closed without a word.
    let (port, _seen) = engine(vec![vec![""]]).await;
    let e = send(&client(port), Method::GET, full("")).await.unwrap_err();
    assert!(
        e.to_string().contains("closed the connection before answering"),
        "{e}"
    );
}

#[tokio::test]
async fn an_upgrade_hands_over_the_connection_with_what_followed_the_head() {
    let switch =
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nfirst bytes";
    let (port, _seen) = engine(vec![vec![switch]]).await;
    let client = client(port);
    let (parts, ()) = Request::builder()
        .uri("/push")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(())
        .unwrap()
        .into_parts();
    let head = Head {
        method: &parts.method,
        target: "/push",
        fields: &parts.headers,
        upgrade: true,
    };
    let mut resp = client.send(head, full("")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.body().is_end_stream());
    let switched = resp.extensions_mut().remove::<Switched>().unwrap();
    let mut upgraded = switched.take().unwrap();
    assert!(switched.take().is_none(), "taken once");
    let mut got = [0u8; 11];
    upgraded.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"first bytes");
}

#[tokio::test]
async fn a_refused_connection_is_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let e = send(&client(port), Method::GET, full(""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("tcp connect to 127.0.0.1:{port}")) && e.contains("refused"),
        "{e}"
    );
}

/// A body that sends `first`, then a megabyte a frame for as long as it is read.
fn endless(first: &'static [u8]) -> ProxyBody {
    let more = futures_util::stream::repeat_with(|| {
        Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 1 << 20])))
    });
    let first = Ok::<_, BoxError>(Frame::data(Bytes::from_static(first)));
    let frames = futures_util::StreamExt::chain(futures_util::stream::iter([first]), more);
    StreamBody::new(frames).boxed()
}

/// An engine that reads a request's head only, then writes `answer` and holds the connection
/// open without reading any more.
async fn refusing_engine(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        socket.write_all(answer.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    port
}

/// An answer before the end of a streamed body is the answer: the client stops sending (the
/// engine reads no more, so the client would otherwise wait on a full window), and does not
/// reuse the connection, where the body's unsent rest would be read as a request.
#[tokio::test]
async fn an_answer_before_the_body_ends_stops_the_sending_and_is_the_answer() {
    let refusal =
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo long";
    let port = refusing_engine(refusal).await;
    let client = client(port);
    let sent = tokio::time::timeout(
        Duration::from_secs(10),
        send(&client, Method::POST, endless(b"{")),
    )
    .await
    .expect("the answer came while the body was still being sent");
    let (status, _, body) = sent.unwrap();
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PAYLOAD_TOO_LARGE, &b"too long"[..])
    );
    assert_eq!(
        pooled(&client),
        0,
        "a connection with half a request on it is closed"
    );
}

/// An interim answer does not stop the body: the engine's `100 Continue` asks for it.
#[tokio::test]
async fn an_interim_answer_lets_the_body_go_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let engine = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut continued = false;
        while !seen.ends_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the whole body comes");
            seen.extend_from_slice(&chunk[..n]);
            if !continued && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
                continued = true;
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8(seen).unwrap()
    });
    // The second frame comes well after the engine's interim answer.
    let frames = futures_util::stream::unfold(0, |n| async move {
        match n {
            0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))), 1)),
            1 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((Ok(Frame::data(Bytes::from_static(b"def"))), 2))
            }
            _ => None,
        }
    });
    let client = client(port);
    let (status, _, body) = send(&client, Method::PUT, StreamBody::new(frames).boxed())
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(
        pooled(&client),
        1,
        "the whole request went, the connection is reused"
    );
    let request = engine.await.unwrap();
    assert!(
        request.ends_with("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"),
        "{request}"
    );
}
