//! A minimal HTTP/1.1 keep-alive client: one request written whole, one response read whole.
//!
//! Hand-written rather than hyper's client so that the load generator spends as little of the
//! shared CPU as possible and so that what is measured is plain: the request bytes are built once,
//! and each response is read to its last byte (by `Content-Length` or chunked encoding) before the
//! next request goes out.

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::Error;

/// Longest status or header line accepted; anything longer is a broken response.
const MAX_LINE: usize = 16 << 10;

/// What to send, built once.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestArgs {
    /// Request path and query
    #[arg(long, default_value = "/api01rv2/patientgetv2?id=1&format=json")]
    path: String,
    /// HTTP Basic credentials `ID:PASSWORD` (the person at the terminal, or the engine's account)
    #[arg(long)]
    user: Option<String>,
    /// POST this file as the body instead of sending a GET
    #[arg(long)]
    post: Option<std::path::PathBuf>,
    /// The body's Content-Type (with --post)
    #[arg(long, default_value = "application/json")]
    content_type: String,
    /// A 200 must also carry this response header (e.g. x-kakehashi-journal-id); one without it
    /// counts as an error
    #[arg(long)]
    pub expect_header: Option<String>,
}

impl RequestArgs {
    /// A GET of `path`, with Basic credentials if given.
    pub fn get(path: String, user: Option<String>) -> Self {
        RequestArgs {
            path,
            user,
            post: None,
            content_type: String::new(),
            expect_header: None,
        }
    }
}

pub fn build_request(args: &RequestArgs, host: &str) -> Result<Vec<u8>, Error> {
    let method = if args.post.is_some() { "POST" } else { "GET" };
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {host}\r\n", args.path);
    if let Some(user) = &args.user {
        let token = base64::engine::general_purpose::STANDARD.encode(user);
        head.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = match &args.post {
        Some(file) => std::fs::read(file).map_err(|e| format!("--post {}: {e}", file.display()))?,
        None => Vec::new(),
    };
    if args.post.is_some() {
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            args.content_type,
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// The parts of a response the benchmark checks.
pub struct Response {
    pub status: u16,
    /// The server asked to close the connection after this response.
    pub close: bool,
    /// The value of the header the connection watches ([`Connection::watching`]), if present.
    pub watched: Option<Vec<u8>>,
}

/// One keep-alive connection.
pub struct Connection<S> {
    stream: BufReader<S>,
    line: Vec<u8>,
    body: Vec<u8>,
    /// A response header whose value each [`Response`] reports.
    watch: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream: BufReader::with_capacity(16 << 10, stream),
            line: Vec::with_capacity(256),
            body: Vec::with_capacity(16 << 10),
            watch: None,
        }
    }

    /// Reports the value of the response header `name` (any case) with every response.
    pub fn watching(mut self, name: Option<&str>) -> Self {
        self.watch = name.map(|n| n.trim().as_bytes().to_vec());
        self
    }

    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }

    /// Sends `request` and reads the whole response.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Response, Error> {
        self.stream.get_mut().write_all(request).await?;
        self.stream.get_mut().flush().await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response, Error> {
        self.read_line().await?;
        let status = parse_status(&self.line)?;
        let (mut length, mut chunked, mut close, mut watched) = (None, false, false, None);
        loop {
            self.read_line().await?;
            let line = trim_crlf(&self.line);
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(format!("malformed header line {:?}", String::from_utf8_lossy(line)).into());
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(parse_number(value, 10)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = value.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = value.eq_ignore_ascii_case(b"close");
            }
            if self
                .watch
                .as_deref()
                .is_some_and(|w| name.eq_ignore_ascii_case(w))
            {
                watched = Some(value.to_vec());
            }
        }
        match (chunked, length) {
            (true, _) => self.read_chunked().await?,
            (false, Some(n)) => self.read_body(n).await?,
            // 1xx, 204 and 304 have no body; anything else must say how long it is on keep-alive.
            (false, None) if status == 204 || status == 304 || status < 200 => {}
            (false, None) => return Err(format!("status {status} without Content-Length or chunked").into()),
        }
        Ok(Response {
            status,
            close,
            watched,
        })
    }

    async fn read_chunked(&mut self) -> Result<(), Error> {
        loop {
            self.read_line().await?;
            let size_field = trim_crlf(&self.line);
            let size_field = size_field.split(|&b| b == b';').next().unwrap_or(size_field);
            let size = parse_number(trim(size_field), 16)?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    self.read_line().await?;
                    if trim_crlf(&self.line).is_empty() {
                        return Ok(());
                    }
                }
            }
            self.read_body(size + 2).await?;
        }
    }

    async fn read_body(&mut self, n: usize) -> Result<(), Error> {
        self.body.resize(n, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(())
    }

    async fn read_line(&mut self) -> Result<(), Error> {
        self.line.clear();
        let n = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)
            .await?;
        match n {
            0 => Err("the server closed the connection".into()),
            _ if self.line.last() != Some(&b'\n') => Err("response line too long or cut short".into()),
            _ => Ok(()),
        }
    }
}

fn parse_status(line: &[u8]) -> Result<u16, Error> {
    let text = String::from_utf8_lossy(trim_crlf(line));
    let mut parts = text.split(' ');
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!("malformed status line {text:?}").into()),
    }
}

fn parse_number(text: &[u8], radix: u32) -> Result<usize, Error> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| usize::from_str_radix(s, radix).ok())
        .ok_or_else(|| format!("malformed length {:?}", String::from_utf8_lossy(text)).into())
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line)
}

fn trim(text: &[u8]) -> &[u8] {
    text.trim_ascii()
}
