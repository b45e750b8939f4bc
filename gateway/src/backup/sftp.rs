//! A small SFTP client (protocol version 3, what OpenSSH's server speaks) over the system `ssh`.
//!
//! The connection is OpenSSH's own (`ssh -s HOST sftp`, set up by [`super::target`]): host key
//! checking, keys and ciphers stay in the program every administrator already trusts, and this
//! module only speaks the file protocol over its standard input and output. It knows the dozen
//! requests a backup needs (open, write, read, close, rename, remove, stat, list) and two of
//! OpenSSH's extensions: `fsync@openssh.com` (the archive is on the server's disk before it is
//! renamed into place) and `posix-rename@openssh.com` (an atomic rename).
//!
//! Writes are pipelined (up to [`IN_FLIGHT`] requests unanswered), so an upload is not one round
//! trip per 32 KiB. Replies must come in the order of their requests, as OpenSSH's server sends
//! them; the protocol allows a server to answer out of order, which this client refuses rather
//! than misreads.
//!
//! Every failure is an [`io::Error`] that says what the server said, or, when the connection
//! ended, what `ssh` printed (`Host key verification failed.`, `Permission denied (publickey).`).

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// Request and reply types (draft-ietf-secsh-filexfer-02).
const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const EXTENDED_REPLY: u8 = 201;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;

/// Open flags.
pub const O_READ: u32 = 0x01;
pub const O_WRITE: u32 = 0x02;
pub const O_CREATE: u32 = 0x08;
pub const O_EXCLUSIVE: u32 = 0x20;

/// Attribute flags.
const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Status codes.
const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;

const FSYNC: &str = "fsync@openssh.com";
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const STATVFS: &str = "statvfs@openssh.com";

/// The largest reply accepted: OpenSSH's own limit is 256 KiB; anything far beyond is not SFTP.
const MAX_REPLY: u32 = 1 << 20;
/// Bytes per write request: what OpenSSH's `sftp` sends.
const CHUNK: usize = 32 * 1024;
/// Bytes asked for per read request (a server may send fewer).
const READ_CHUNK: u32 = 64 * 1024;
/// Write requests sent before the first is answered: 2 MiB in flight, enough to keep a line to
/// the vendor's data centre busy.
pub const IN_FLIGHT: usize = 64;

/// An SFTP session over a child `ssh` process (or, for the fuzz target, any byte streams).
pub struct Session {
    /// `None` when the session is not over `ssh`.
    child: Option<Child>,
    /// `None` once closed: the end of its input is what tells `ssh` to stop.
    to: Option<BufWriter<Box<dyn Write + Send>>>,
    from: BufReader<Box<dyn Read + Send>>,
    /// What `ssh` prints, gathered by a thread of its own: the reason when the connection fails.
    stderr: Option<JoinHandle<Vec<u8>>>,
    next_id: u32,
    /// Requests sent and not yet answered, oldest first.
    unanswered: VecDeque<u32>,
    extensions: Vec<String>,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

/// What a `stat` or a listing says of a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attrs {
    pub size: Option<u64>,
    pub permissions: Option<u32>,
}

impl Attrs {
    pub fn is_dir(&self) -> bool {
        self.permissions.is_some_and(|p| p & 0o170_000 == 0o040_000)
    }
}

impl Session {
    /// Starts `ssh` (a command that ends in the `sftp` subsystem) and opens the session.
    pub fn start(mut ssh: Command) -> io::Result<Session> {
        let mut child = ssh
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run ssh: {e}")))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(io::Error::other("ssh started without its pipes"));
        };
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            // At most 64 KiB: the reason is in the last lines.
            let _ = (&mut stderr).take(1 << 16).read_to_end(&mut text);
            let _ = io::copy(&mut stderr, &mut io::sink());
            text
        });
        Session::over(Some(child), Box::new(stdout), Box::new(stdin), Some(stderr))
    }

    /// A session whose replies come from `from` and whose requests go to `to`: the server's
    /// bytes, whatever they are, for the `sftp` fuzz target (`crate::fuzzing::sftp`).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn over_streams(from: Box<dyn Read + Send>, to: Box<dyn Write + Send>) -> io::Result<Session> {
        Session::over(None, from, to, None)
    }

    fn over(
        child: Option<Child>,
        from: Box<dyn Read + Send>,
        to: Box<dyn Write + Send>,
        stderr: Option<JoinHandle<Vec<u8>>>,
    ) -> io::Result<Session> {
        let mut session = Session {
            child,
            to: Some(BufWriter::with_capacity(CHUNK + 1024, to)),
            from: BufReader::with_capacity(1 << 16, from),
            stderr,
            next_id: 0,
            unanswered: VecDeque::new(),
            extensions: Vec::new(),
            broken: None,
        };
        session.init()?;
        Ok(session)
    }

    fn init(&mut self) -> io::Result<()> {
        let mut init = Vec::with_capacity(9);
        put_u32(&mut init, 5);
        init.push(INIT);
        put_u32(&mut init, 3);
        self.send_raw(&init)?;
        let (kind, body) = self.receive()?;
        let mut r = Msg(&body);
        let version = r.u32()?;
        if kind != VERSION || version != 3 {
            return Err(self.fail(format!(
                "the server does not speak SFTP version 3 (reply type {kind}, version {version})"
            )));
        }
        while !r.0.is_empty() {
            let name = String::from_utf8_lossy(r.string()?).into_owned();
            r.string()?;
            self.extensions.push(name);
        }
        Ok(())
    }

    /// Whether the server announced the extension `name` (`fsync@openssh.com`, …).
    pub fn has(&self, name: &str) -> bool {
        self.extensions.iter().any(|e| e == name)
    }

    /// Opens `path` with `flags` (`O_*`); a new file gets `mode`.
    pub fn open(&mut self, path: &str, flags: u32, mode: u32) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        put_str(&mut body, path.as_bytes());
        put_u32(&mut body, flags);
        put_u32(&mut body, ATTR_PERMISSIONS);
        put_u32(&mut body, mode);
        self.handle(OPEN, &body)
    }

    pub fn close(&mut self, handle: &[u8]) -> io::Result<()> {
        let mut body = Vec::new();
        put_str(&mut body, handle);
        self.call_status(CLOSE, &body)
    }

    /// Reads up to [`READ_CHUNK`] bytes at `offset`; `None` at the end of the file.
    pub fn read(&mut self, handle: &[u8], offset: u64, len: u32) -> io::Result<Option<Vec<u8>>> {
        let mut body = Vec::new();
        put_str(&mut body, handle);
        put_u64(&mut body, offset);
        put_u32(&mut body, len.min(READ_CHUNK));
        let (kind, reply) = self.call(READ, &body)?;
        match kind {
            DATA => Ok(Some(Msg(&reply).string()?.to_vec())),
            STATUS if status_code(&reply) == Some(FX_EOF) => Ok(None),
            _ => {
                self.expect_status(kind, &reply)?;
                Err(self.fail("a read answered with no data and no end of file".into()))
            }
        }
    }

    /// Sends a write and does not wait for its answer: [`Session::answer`] collects it.
    fn write(&mut self, handle: &[u8], offset: u64, data: &[u8]) -> io::Result<u32> {
        let mut body = Vec::with_capacity(handle.len() + data.len() + 16);
        put_str(&mut body, handle);
        put_u64(&mut body, offset);
        put_str(&mut body, data);
        self.send(WRITE, &body)
    }

    /// Flushes an open file to the server's disk, where the server can (`fsync@openssh.com`);
    /// returns whether it could.
    pub fn fsync(&mut self, handle: &[u8]) -> io::Result<bool> {
        if !self.has(FSYNC) {
            return Ok(false);
        }
        let mut body = Vec::new();
        put_str(&mut body, FSYNC.as_bytes());
        put_str(&mut body, handle);
        self.call_status(EXTENDED, &body).map(|()| true)
    }

    /// The bytes free for this login in the file system of `path`, where the server can say
    /// (`statvfs@openssh.com`).
    pub fn free_bytes(&mut self, path: &str) -> io::Result<Option<u64>> {
        if !self.has(STATVFS) {
            return Ok(None);
        }
        let mut body = Vec::new();
        put_str(&mut body, STATVFS.as_bytes());
        put_str(&mut body, path.as_bytes());
        let (kind, reply) = self.call(EXTENDED, &body)?;
        if kind != EXTENDED_REPLY {
            return self.expect_status(kind, &reply).map(|()| None);
        }
        // f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, …
        let mut r = Msg(&reply);
        let (_, frsize, _, _, avail) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        Ok(Some(frsize.saturating_mul(avail)))
    }

    /// Renames `from` to `to`: atomically, replacing nothing, with `posix-rename@openssh.com`
    /// where the server has it (the plain request refuses an existing `to` on OpenSSH anyway).
    pub fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut body = Vec::new();
        let kind = if self.has(POSIX_RENAME) {
            put_str(&mut body, POSIX_RENAME.as_bytes());
            EXTENDED
        } else {
            RENAME
        };
        put_str(&mut body, from.as_bytes());
        put_str(&mut body, to.as_bytes());
        self.call_status(kind, &body)
    }

    pub fn remove(&mut self, path: &str) -> io::Result<()> {
        let mut body = Vec::new();
        put_str(&mut body, path.as_bytes());
        self.call_status(REMOVE, &body)
    }

    pub fn stat(&mut self, path: &str) -> io::Result<Attrs> {
        let mut body = Vec::new();
        put_str(&mut body, path.as_bytes());
        let (kind, reply) = self.call(STAT, &body)?;
        if kind != ATTRS {
            self.expect_status(kind, &reply)?;
            return Err(self.fail(format!("a reply of type {kind} to stat")));
        }
        Msg(&reply).attrs()
    }

    /// The entries of the directory `path` (not `.` and `..`).
    pub fn list(&mut self, path: &str) -> io::Result<Vec<(String, Attrs)>> {
        let mut body = Vec::new();
        put_str(&mut body, path.as_bytes());
        let handle = self.handle(OPENDIR, &body)?;
        let mut out = Vec::new();
        let listed = loop {
            let mut body = Vec::new();
            put_str(&mut body, &handle);
            let (kind, reply) = self.call(READDIR, &body)?;
            match kind {
                NAME => {
                    let mut r = Msg(&reply);
                    for _ in 0..r.u32()? {
                        let name = String::from_utf8_lossy(r.string()?).into_owned();
                        r.string()?;
                        let attrs = r.attrs()?;
                        if name != "." && name != ".." {
                            out.push((name, attrs));
                        }
                    }
                }
                STATUS if status_code(&reply) == Some(FX_EOF) => break Ok(()),
                _ => break self.expect_status(kind, &reply),
            }
        };
        let closed = self.close(&handle);
        listed.and(closed).map(|()| out)
    }

    /// Ends the session: `ssh` sees the end of its input and exits.
    pub fn end(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(mut to) = self.to.take() {
            let _ = to.flush();
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn handle(&mut self, kind: u8, body: &[u8]) -> io::Result<Vec<u8>> {
        let (reply_kind, reply) = self.call(kind, body)?;
        if reply_kind == HANDLE {
            return Ok(Msg(&reply).string()?.to_vec());
        }
        self.expect_status(reply_kind, &reply)?;
        Err(self.fail(format!("a reply of type {reply_kind} where a handle was due")))
    }

    fn call_status(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        let (kind, reply) = self.call(kind, body)?;
        self.expect_status(kind, &reply)
    }

    fn call(&mut self, kind: u8, body: &[u8]) -> io::Result<(u8, Vec<u8>)> {
        let id = self.send(kind, body)?;
        self.answer(id)
    }

    /// Sends one request; returns its id.
    fn send(&mut self, kind: u8, body: &[u8]) -> io::Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let len =
            u32::try_from(body.len() + 5).map_err(|_| io::Error::other("an SFTP request over 4 GiB"))?;
        let mut head = Vec::with_capacity(9);
        put_u32(&mut head, len);
        head.push(kind);
        put_u32(&mut head, id);
        self.send_raw(&head)?;
        self.send_raw(body)?;
        self.unanswered.push_back(id);
        Ok(id)
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.usable()?;
        let sent = match self.to.as_mut() {
            Some(to) => to.write_all(bytes),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        sent.map_err(|e| self.fail(format!("cannot send: {e}")))
    }

    /// The reply to request `id`: replies to earlier requests that nobody waits for any more
    /// (an upload abandoned) are read and dropped.
    fn answer(&mut self, id: u32) -> io::Result<(u8, Vec<u8>)> {
        loop {
            let Some(&due) = self.unanswered.front() else {
                return Err(io::Error::other(format!(
                    "no request {id} is waiting for a reply"
                )));
            };
            let (kind, body) = self.receive()?;
            let mut r = Msg(&body);
            let got = r.u32().map_err(|e| self.fail(e.to_string()))?;
            if got != due {
                return Err(self.fail(format!(
                    "the server answered request {got} before {due}: out of order, which this client does not follow"
                )));
            }
            self.unanswered.pop_front();
            if got == id {
                return Ok((kind, r.0.to_vec()));
            }
        }
    }

    fn receive(&mut self) -> io::Result<(u8, Vec<u8>)> {
        self.usable()?;
        let flushed = match self.to.as_mut() {
            Some(to) => to.flush(),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        };
        flushed.map_err(|e| self.fail(format!("cannot send: {e}")))?;
        let mut len = [0u8; 4];
        if let Err(e) = self.from.read_exact(&mut len) {
            return Err(self.fail(format!("no reply: {e}")));
        }
        let len = u32::from_be_bytes(len);
        if !(1..=MAX_REPLY).contains(&len) {
            return Err(self.fail(format!("a reply of {len} bytes: not SFTP")));
        }
        let mut body = vec![0u8; len as usize];
        if let Err(e) = self.from.read_exact(&mut body) {
            return Err(self.fail(format!("a reply cut short: {e}")));
        }
        let kind = body[0];
        body.remove(0);
        Ok((kind, body))
    }

    fn expect_status(&mut self, kind: u8, reply: &[u8]) -> io::Result<()> {
        if kind != STATUS {
            return Err(self.fail(format!("a reply of type {kind} where a status was due")));
        }
        let mut r = Msg(reply);
        let code = r.u32()?;
        let message = String::from_utf8_lossy(r.string().unwrap_or_default()).into_owned();
        let kind = match code {
            FX_OK => return Ok(()),
            FX_EOF => io::ErrorKind::UnexpectedEof,
            FX_NO_SUCH_FILE => io::ErrorKind::NotFound,
            FX_PERMISSION_DENIED => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Err(io::Error::new(
            kind,
            format!("the SFTP server says: {message} (status {code})"),
        ))
    }

    fn usable(&self) -> io::Result<()> {
        match &self.broken {
            Some(why) => Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the connection broken and says why: what `ssh` printed when it ended (the host key,
    /// the login, the network), else `what`.
    fn fail(&mut self, what: String) -> io::Error {
        if let Some(why) = &self.broken {
            return io::Error::new(io::ErrorKind::BrokenPipe, why.clone());
        }
        self.shut();
        let printed = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let said: Vec<&str> = printed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
            .collect();
        let why = match said.last() {
            Some(last) => format!("the SSH connection ended: {last}"),
            None => format!("the SFTP connection failed: {what}"),
        };
        self.broken = Some(why.clone());
        io::Error::new(io::ErrorKind::BrokenPipe, why)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.broken.is_none() {
            self.shut();
        }
    }
}

/// A file being written at the server, from offset 0; pipelined.
pub struct Upload<'s> {
    session: &'s mut Session,
    path: String,
    handle: Option<Vec<u8>>,
    offset: u64,
    chunk: Vec<u8>,
    in_flight: VecDeque<u32>,
}

impl<'s> Upload<'s> {
    /// Creates `path` (mode 0600); it must not exist.
    pub fn create(session: &'s mut Session, path: &str) -> io::Result<Upload<'s>> {
        let handle = session.open(path, O_WRITE | O_CREATE | O_EXCLUSIVE, 0o600)?;
        Ok(Upload {
            session,
            path: path.to_owned(),
            handle: Some(handle),
            offset: 0,
            chunk: Vec::with_capacity(CHUNK),
            in_flight: VecDeque::new(),
        })
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let handle = self.handle.as_deref().unwrap_or_default();
        let id = self.session.write(handle, self.offset, &self.chunk)?;
        self.offset += self.chunk.len() as u64;
        self.chunk.clear();
        self.in_flight.push_back(id);
        if self.in_flight.len() >= IN_FLIGHT {
            self.collect_one()?;
        }
        Ok(())
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let Some(id) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (kind, reply) = self.session.answer(id)?;
        self.session.expect_status(kind, &reply).map_err(|e| self.why(e))
    }

    /// A failed write: protocol version 3 has no "disk full" status, so a generic failure is
    /// checked against the space left at the server, to say so when that is the reason.
    fn why(&mut self, failed: io::Error) -> io::Error {
        if failed.kind() != io::ErrorKind::Other {
            return failed;
        }
        match self.session.free_bytes(&self.path) {
            Ok(Some(free)) if free < CHUNK as u64 => io::Error::new(
                io::ErrorKind::StorageFull,
                format!("No space left on device at the server ({free} bytes free): {failed}"),
            ),
            _ => failed,
        }
    }

    /// Sends the rest, waits for every write to be answered, flushes the file to the server's
    /// disk where the server can, and closes it.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_chunk()?;
        while !self.in_flight.is_empty() {
            self.collect_one()?;
        }
        let handle = self.handle.take().unwrap_or_default();
        let synced = self.session.fsync(&handle);
        let closed = self.session.close(&handle);
        synced.and(closed)
    }
}

impl Write for Upload<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_chunk()
    }
}

impl Drop for Upload<'_> {
    /// An upload abandoned half-way: its handle is closed (the caller removes the file); the
    /// answers still due are dropped by the next request.
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.session.close(&handle);
        }
    }
}

/// A file at the server, read from the start.
pub struct Download<'s> {
    session: &'s mut Session,
    handle: Vec<u8>,
    offset: u64,
    done: bool,
}

impl<'s> Download<'s> {
    pub fn open(session: &'s mut Session, path: &str) -> io::Result<Download<'s>> {
        let handle = session.open(path, O_READ, 0)?;
        Ok(Download {
            session,
            handle,
            offset: 0,
            done: false,
        })
    }
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let want = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        match self.session.read(&self.handle, self.offset, want)? {
            None => {
                self.done = true;
                Ok(0)
            }
            Some(data) if data.is_empty() || data.len() > buf.len() => Err(io::Error::other(format!(
                "the SFTP server sent {} bytes at offset {} where 1 to {} were asked for",
                data.len(),
                self.offset,
                buf.len()
            ))),
            Some(data) => {
                buf[..data.len()].copy_from_slice(&data);
                self.offset += data.len() as u64;
                Ok(data.len())
            }
        }
    }
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        let _ = self.session.close(&self.handle);
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Every string here is a path, a handle or a chunk of at most 32 KiB.
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

fn status_code(reply: &[u8]) -> Option<u32> {
    Msg(reply).u32().ok()
}

/// A reply being read: every field checked against what is left, so that a short or lying reply
/// is an error, never a panic.
struct Msg<'a>(&'a [u8]);

impl<'a> Msg<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an SFTP reply cut short",
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> io::Result<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }

    fn string(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn attrs(&mut self) -> io::Result<Attrs> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            self.take(8)?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            self.take(8)?;
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.string()?;
                self.string()?;
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_or_lying_reply_is_an_error() {
        let mut attrs = Vec::new();
        put_u32(&mut attrs, ATTR_SIZE | ATTR_PERMISSIONS);
        put_u64(&mut attrs, 1234);
        put_u32(&mut attrs, 0o040_755);
        let a = Msg(&attrs).attrs().expect("attributes");
        assert_eq!(a.size, Some(1234));
        assert!(a.is_dir());
        for cut in 0..attrs.len() {
            assert!(Msg(&attrs[..cut]).attrs().is_err(), "cut at {cut}");
        }
        let mut lying = Vec::new();
        put_u32(&mut lying, u32::MAX);
        assert!(Msg(&lying).string().is_err());
    }
}
