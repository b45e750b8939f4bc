//! `loadgen`: the one load generator for both sides of the TLS front-door benchmarks
//! (`bench/tls-front-door.sh`): the gateway and nginx are driven by exactly the same client.
//!
//! It is a terminal as the gateway sees one: TLS 1.2/1.3 over rustls (aws-lc-rs), a client
//! certificate, HTTP/1.1 keep-alive. Four measurements:
//!
//! - `rps`: N connections, each sending its next request as soon as the last response is read
//!   whole (closed loop); connections are opened before the clock starts.
//! - `handshakes`: N loops of connect, full handshake (resumption disabled), close; see
//!   [`handshake`] for how the server's check of the client certificate is included.
//! - `idle`: N established connections held open, for the script to weigh the server's memory.
//! - `latency`: a fixed request rate (open loop); a request that had to wait for the previous
//!   response on its connection counts from its scheduled send time, so a server that stalls is
//!   charged for every request that waited behind the stall (no coordinated omission).
//! - `watch`: a request every few milliseconds (open loop, as many connections as the waiting
//!   requests need) until one is answered by the backup, told by a response header; for the
//!   failover benchmark (`bench/failover.sh`), which fails the primary in between.
//!
//! Each mode prints one line for people and one `RESULT key=value …` line for scripts. Errors are
//! counted, never hidden: a status other than 200 or a broken connection is an error.
#![forbid(unsafe_code)]

mod http1;
mod stats;
mod tls;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use http1::{Connection, RequestArgs};
use stats::Tally;
use tls::{Dialer, TlsArgs};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Longest a single connection attempt or request may take before it counts as an error.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Load generator for the TLS front-door benchmarks (one client for every server measured).
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Keep-alive requests per second: N connections sending back to back
    Rps(Load),
    /// Full TLS handshakes per second: N loops of connect, handshake, close
    Handshakes {
        #[command(flatten)]
        tls: TlsArgs,
        #[arg(long, default_value_t = 32)]
        conns: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Send one GET to this path on each connection (must answer 200) before closing
        #[arg(long)]
        request: Option<String>,
        /// HTTP Basic credentials for --request
        #[arg(long)]
        user: Option<String>,
    },
    /// Open N connections (handshake and one request each), print `HOLDING N`, hold them until
    /// stdin closes or SIGTERM/SIGINT arrives
    Idle {
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        request: RequestArgs,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
    },
    /// Latency at a fixed request rate (open loop) over N keep-alive connections
    Latency {
        #[command(flatten)]
        load: Load,
        /// Requests per second, spread evenly over the connections
        #[arg(long)]
        rate: f64,
    },
    /// A request every --every-ms (open loop) until a 200 carries --marker: prints `READY` at the
    /// first 200 without it, then a RESULT line with the wall-clock time (µs since the Unix epoch)
    /// the first marked 200 arrived
    Watch {
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        request: RequestArgs,
        /// Milliseconds between requests; a request goes out on time even while earlier ones
        /// still wait (on connections of their own)
        #[arg(long, default_value_t = 20)]
        every_ms: u64,
        /// `NAME:VALUE`, the response header of an answer from the backup (any case)
        #[arg(long, default_value = "x-hybridmode:emergency")]
        marker: String,
        /// Fail if no marked answer came within this many seconds
        #[arg(long, default_value_t = 60.0)]
        max_secs: f64,
    },
}

/// Keep-alive load: what to send, over how many connections, for how long.
#[derive(Debug, clap::Args)]
struct Load {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    request: RequestArgs,
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// Seconds to measure
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse().mode).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(mode: Mode) -> Result<(), Error> {
    match mode {
        Mode::Rps(load) => {
            let (tally, elapsed) = keep_alive(&load, None).await?;
            let rps = tally.ok as f64 / elapsed;
            println!(
                "rps: {rps:.0} requests/s over {} connections in {elapsed:.1} s; p50 {} µs, p99 {} µs; {} errors",
                load.conns,
                tally.percentile(50.0),
                tally.percentile(99.0),
                tally.errors()
            );
            println!(
                "RESULT mode=rps conns={} requests={} rps={rps:.1} {}",
                load.conns,
                tally.ok,
                tally.fields()
            );
            tally.explain();
        }
        Mode::Latency { load, rate } => {
            let rate = positive(rate, "--rate")?;
            let (tally, elapsed) = keep_alive(&load, Some(rate)).await?;
            let achieved = tally.ok as f64 / elapsed;
            println!(
                "latency at {rate:.0} requests/s over {} connections: p50 {} µs, p99 {} µs, max {} µs; {} errors",
                load.conns,
                tally.percentile(50.0),
                tally.percentile(99.0),
                tally.latencies_us.last().copied().unwrap_or(0),
                tally.errors()
            );
            println!(
                "RESULT mode=latency conns={} rate={rate:.1} achieved={achieved:.1} {}",
                load.conns,
                tally.fields()
            );
            tally.explain();
        }
        Mode::Handshakes {
            tls,
            conns,
            duration,
            request,
            user,
        } => {
            let dialer = Dialer::new(&tls)?;
            let seconds = positive(duration, "--duration")?;
            let request = match request {
                Some(path) => {
                    let args = RequestArgs::get(path, user);
                    Some(Arc::new(http1::build_request(&args, dialer.host())?))
                }
                None => None,
            };
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let mut loops = JoinSet::new();
            for _ in 0..conns {
                loops.spawn(handshake_loop(dialer.clone(), request.clone(), deadline));
            }
            let tally = Tally::merge(loops.join_all().await);
            let elapsed = start.elapsed().as_secs_f64();
            let rate = tally.ok as f64 / elapsed;
            println!(
                "handshakes: {rate:.0} full handshakes/s over {conns} loops in {elapsed:.1} s; p50 {} µs, p99 {} µs; {} errors",
                tally.percentile(50.0),
                tally.percentile(99.0),
                tally.errors()
            );
            println!(
                "RESULT mode=handshakes conns={conns} handshakes={} hps={rate:.1} {}",
                tally.ok,
                tally.fields()
            );
            tally.explain();
        }
        Mode::Watch {
            tls,
            request,
            every_ms,
            marker,
            max_secs,
        } => watch(&tls, &request, every_ms, &marker, max_secs).await?,
        Mode::Idle { tls, request, conns } => {
            let (dialer, request) = setup(&tls, &request)?;
            let (held, tally) = open_established(&dialer, &request, conns).await;
            println!("HOLDING {}", held.len());
            std::io::Write::flush(&mut std::io::stdout())?;
            tally.explain();
            wait_for_release().await?;
            println!(
                "RESULT mode=idle conns={conns} held={} errors={}",
                held.len(),
                tally.errors()
            );
        }
    }
    Ok(())
}

fn setup(tls: &TlsArgs, request: &RequestArgs) -> Result<(Dialer, Arc<Vec<u8>>), Error> {
    let dialer = Dialer::new(tls)?;
    let request = Arc::new(http1::build_request(request, dialer.host())?);
    Ok((dialer, request))
}

fn positive(value: f64, name: &str) -> Result<f64, Error> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{name} must be a positive number, not {value}").into())
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens every connection before the clock starts (a server that refuses one is a setup error),
/// then drives them all; returns the tally and the seconds it took.
async fn keep_alive(load: &Load, rate: Option<f64>) -> Result<(Tally, f64), Error> {
    let (dialer, request) = setup(&load.tls, &load.request)?;
    let seconds = positive(load.duration, "--duration")?;
    let expect: Option<Arc<str>> = load.request.expect_header.as_deref().map(Arc::from);
    let mut connections = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        connections.push(Connection::new(dialer.connect().await?).watching(expect.as_deref()));
    }
    let start = Instant::now();
    let tally = drive_all(dialer, request, connections, start, seconds, rate, expect).await;
    Ok((tally, start.elapsed().as_secs_f64()))
}

/// Runs every connection until `seconds` have passed; with `rate`, on a fixed schedule.
async fn drive_all(
    dialer: Dialer,
    request: Arc<Vec<u8>>,
    connections: Vec<Connection<Tls>>,
    start: Instant,
    seconds: f64,
    rate: Option<f64>,
    expect: Option<Arc<str>>,
) -> Tally {
    let n = connections.len();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for (i, conn) in connections.into_iter().enumerate() {
        // Open loop: connection i sends requests i, i+n, i+2n, … of one evenly spaced schedule.
        let pace = rate.map(|r| Pace {
            next: start + Duration::from_secs_f64(i as f64 / r),
            every: Duration::from_secs_f64(n as f64 / r),
        });
        tasks.spawn(drive(
            dialer.clone(),
            request.clone(),
            conn,
            deadline,
            pace,
            expect.clone(),
        ));
    }
    Tally::merge(tasks.join_all().await)
}

/// When the next request of an open-loop connection is due, and the time between its requests.
struct Pace {
    next: Instant,
    every: Duration,
}

/// One keep-alive connection's loop: send, read the whole response, check it, repeat. With
/// `expect`, a 200 must carry that header.
async fn drive(
    dialer: Dialer,
    request: Arc<Vec<u8>>,
    mut conn: Connection<Tls>,
    deadline: Instant,
    mut pace: Option<Pace>,
    expect: Option<Arc<str>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut last_done = Instant::now();
    loop {
        // Where the latency clock starts: at the send in closed loop. In open loop, at the scheduled
        // time if the previous response was still outstanding then (the server made this request
        // wait), else at the send (the timer's wake-up, up to a millisecond late, is ours).
        let due = match &mut pace {
            Some(p) => {
                let due = p.next;
                p.next += p.every;
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                if last_done > due { due } else { Instant::now() }
            }
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        let broken = match tokio::time::timeout(TIMEOUT, conn.exchange(&request)).await {
            Ok(Ok(response)) => {
                match (response.status, &expect) {
                    (200, Some(name)) if response.watched.is_none() => {
                        tally.error(format!("a 200 without the header {name}"))
                    }
                    (200, _) => tally.record(due.elapsed()),
                    (status, _) => tally.bad_status(status),
                }
                response.close
            }
            Ok(Err(e)) => {
                tally.error(e);
                true
            }
            Err(_) => {
                tally.error("no complete response within 10 s");
                true
            }
        };
        last_done = Instant::now();
        if broken {
            match reconnect(&dialer, deadline, &mut tally).await {
                Some(fresh) => conn = fresh.watching(expect.as_deref()),
                None => break,
            }
        }
    }
    tally
}

/// A new connection after the server closed one; failures count as errors and are retried.
async fn reconnect(dialer: &Dialer, deadline: Instant, tally: &mut Tally) -> Option<Connection<Tls>> {
    while Instant::now() < deadline {
        match dialer.connect().await {
            Ok(tls) => return Some(Connection::new(tls)),
            Err(e) => {
                tally.error(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    None
}

async fn handshake_loop(dialer: Dialer, request: Option<Arc<Vec<u8>>>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let started = Instant::now();
        match tokio::time::timeout(TIMEOUT, handshake(&dialer, request.as_deref())).await {
            Ok(Ok(())) => tally.record(started.elapsed()),
            Ok(Err(e)) => tally.error(e),
            Err(_) => tally.error("handshake and close not done within 10 s"),
        }
    }
    tally
}

/// One full handshake, counted only once the server has checked the client certificate.
///
/// In TLS 1.3 the client's certificate travels in its last flight, after which the client
/// considers the handshake done while the server has not yet looked at it. So after the handshake
/// the client sends close_notify and reads until the server's end of the stream: the server reads
/// records in order, so it has verified (or rejected, with an alert that counts as an error) the
/// certificate before it sees the close. This costs both servers the same and involves no
/// upstream. With `request`, one request is answered (200) first instead, which does involve the
/// upstream.
async fn handshake(dialer: &Dialer, request: Option<&Vec<u8>>) -> Result<(), Error> {
    let mut tls = dialer.connect().await?;
    if let Some(request) = request {
        let mut conn = Connection::new(tls);
        let response = conn.exchange(request).await?;
        if response.status != 200 {
            return Err(format!("HTTP status {}", response.status).into());
        }
        tls = conn.into_inner();
    }
    tls.shutdown().await?;
    let mut sink = [0u8; 4096];
    loop {
        match tls.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            // The server closed TCP without its own close_notify: still a completed exchange.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("after the handshake: {e}").into()),
        }
    }
}

/// Opens `conns` connections, 64 at a time, each with one request answered 200.
async fn open_established(
    dialer: &Dialer,
    request: &Arc<Vec<u8>>,
    conns: usize,
) -> (Vec<Connection<Tls>>, Tally) {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = JoinSet::new();
    for _ in 0..conns {
        let (dialer, request, gate) = (dialer.clone(), request.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut conn = Connection::new(dialer.connect().await?);
            match conn.exchange(&request).await?.status {
                200 => Ok::<_, Error>(conn),
                status => Err(format!("HTTP status {status}").into()),
            }
        });
    }
    let (mut held, mut tally) = (Vec::with_capacity(conns), Tally::default());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(conn)) => held.push(conn),
            Ok(Err(e)) => tally.error(e),
            Err(e) => tally.error(e),
        }
    }
    (held, tally)
}

/// Returns when stdin reaches its end or SIGTERM or SIGINT arrives.
async fn wait_for_release() -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    let stdin_closed = async {
        while let Ok(n) = stdin.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// How one request of `watch` ended.
struct Answer {
    status: u16,
    marked: bool,
    sent: SystemTime,
    received: SystemTime,
}

/// Microseconds since the Unix epoch: the clock the script reads before it signals
/// (`$EPOCHREALTIME`).
fn epoch_us(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// What every request of `watch` shares.
struct Watcher {
    dialer: Dialer,
    request: Arc<Vec<u8>>,
    /// The marker header's name and value.
    name: String,
    value: Vec<u8>,
    /// Kept-alive connections with no request waiting on them.
    idle: Mutex<Vec<Connection<Tls>>>,
    limit: Duration,
}

impl Watcher {
    fn take_idle(&self) -> Option<Connection<Tls>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// One request, on `conn` or a new connection; the connection goes back to the idle ones
    /// if the server keeps it open.
    async fn one(&self, conn: Option<Connection<Tls>>) -> Result<Answer, String> {
        let sent = SystemTime::now();
        let exchange = async {
            let mut conn = match conn {
                Some(c) => c,
                None => Connection::new(self.dialer.connect().await?).watching(Some(&self.name)),
            };
            let response = conn.exchange(&self.request).await?;
            Ok::<_, Error>((conn, response))
        };
        let (conn, response) = match tokio::time::timeout(self.limit, exchange).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.limit)),
        };
        let received = SystemTime::now();
        if !response.close {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
        let marked = response
            .watched
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case(&self.value));
        Ok(Answer {
            status: response.status,
            marked,
            sent,
            received,
        })
    }
}

/// The `watch` mode: requests on a fixed schedule, each on an idle kept-alive connection or a
/// new one, so that requests held by a silent primary do not delay the ones after them: the
/// first marked answer arrives as soon as the proxy answers anything from the backup, whatever
/// it does with the requests already waiting.
async fn watch(
    tls: &TlsArgs,
    args: &RequestArgs,
    every_ms: u64,
    marker: &str,
    max_secs: f64,
) -> Result<(), Error> {
    let (dialer, request) = setup(tls, args)?;
    let (name, value) = marker
        .split_once(':')
        .ok_or_else(|| format!("--marker {marker:?}: expected NAME:VALUE"))?;
    let limit = Duration::from_secs_f64(positive(max_secs, "--max-secs")?);
    let watcher = Arc::new(Watcher {
        dialer,
        request,
        name: name.trim().to_owned(),
        value: value.trim().as_bytes().to_vec(),
        idle: Mutex::default(),
        limit,
    });
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let give_up = tokio::time::sleep(limit);
    tokio::pin!(give_up);
    let (mut sent, mut unmarked, mut errors, mut dialed) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let outcome = tokio::select! {
            _ = tick.tick() => {
                let conn = watcher.take_idle();
                sent += 1;
                dialed += u64::from(conn.is_none());
                let (watcher, tx) = (watcher.clone(), tx.clone());
                tokio::spawn(async move { tx.send(watcher.one(conn).await) });
                continue;
            }
            Some(outcome) = answers.recv() => outcome,
            () = &mut give_up => {
                return Err(format!(
                    "no answer marked {marker} within {max_secs} s \
                     ({sent} requests, {unmarked} unmarked, {errors} errors)"
                )
                .into());
            }
        };
        match outcome {
            Ok(a) if a.status == 200 && a.marked && unmarked == 0 => {
                return Err(format!("the backup ({marker}) answered before the primary did").into());
            }
            Ok(a) if a.status == 200 && a.marked => {
                println!(
                    "RESULT mode=watch marked_us={} sent_us={} requests={sent} unmarked={unmarked} \
                     errors={errors} connections={dialed}",
                    epoch_us(a.received),
                    epoch_us(a.sent)
                );
                return Ok(());
            }
            Ok(a) if a.status == 200 => {
                unmarked += 1;
                if unmarked == 1 {
                    println!("READY");
                }
            }
            Ok(a) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: first error: HTTP status {}", a.status);
                }
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("loadgen: first error: {e}");
                }
            }
        }
    }
}
