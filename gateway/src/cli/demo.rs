//! `kakehashi demo`: a working demo clinic in one command.
//!
//! It writes a clinic into a directory (its CA, a terminal, the gateway's server and uplink
//! certificates, the cloud engine's certificate, a staff account, `engine.toml` and
//! `gateway.toml`), then starts `engine-sim` as the cloud and the gateway in front of it as two
//! separate processes, exactly as a user would by hand, and prints `READY <gateway URL>` and the
//! curl command that fetches a patient through the gateway.
//!
//! The directory is a contract that people and scripts rely on (DESIGN.md, "The demo directory
//! is a contract"): `ca.pem`, `terminal.pem`, `terminal.key`, `terminal.p12`,
//! `terminal.p12.password`, `user.txt`, `engine.toml`, `gateway.toml`, for the WireGuard
//! terminal `terminal-wg.conf`, `terminal-wg.url` (and `terminal-wg.png`), and `est.url` (the
//! EST listener's base URL) keep their names; new
//! files are added as features land. Running it again on the same directory reuses the clinic.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use cert_tool::ca::{self, Ca, Request};
use cert_tool::keys::{KeyAlgorithm, Passphrase};
use cert_tool::profile::{Profile, San};
use cert_tool::verify::{self, Verdict};
use cert_tool::{Error, Result, files, p12};

/// The host name terminals use for the engine; the gateway's server certificate carries it.
const ENGINE_HOST: &str = "engine.demo-clinic.test";
/// The demo's terminal and staff account.
const TERMINAL: &str = "reception-1";
const USER: &str = "reception";
/// The demo's WireGuard terminal: an inventory entry of its own, beside the TLS one.
const WG_TERMINAL: &str = "terminal-wg";
/// The gateway's tunnel address and the terminals' network.
const WG_NET: &str = "10.77.0.1/24";
/// The port on the tunnel address that serves the engine API (the `[wireguard]` default).
const WG_API_PORT: u16 = 8000;
/// WireGuard's customary port, used when it is free.
const WG_PORT: u16 = 51820;
/// Set by the demo for each process it starts, and by the firmware supervisor for the version on
/// trial: the starting process's id. The child asks the kernel to send it SIGTERM when that
/// process dies (see [`end_with_demo`]).
pub const DEMO_PID_ENV: &str = "KAKEHASHI_DEMO_PID";

/// Whether this process is a supervisor's child ([`DEMO_PID_ENV`] set): the demo's, or a
/// firmware trial beside the older version that supervises it and may be rolled back to.
pub fn supervised() -> bool {
    std::env::var_os(DEMO_PID_ENV).is_some()
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo clinic (created if missing; reused if it holds one already)
    #[arg(long, default_value = "kakehashi-demo")]
    dir: PathBuf,
    /// Write the clinic and its configuration files, then exit without starting anything
    #[arg(long)]
    setup_only: bool,
    /// Where the gateway listens for terminals (written into a new clinic's gateway.toml)
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Where the demo's cloud engine listens (written into a new clinic's engine.toml)
    #[arg(long, default_value = "127.0.0.1:18000")]
    engine_listen: SocketAddr,
    /// The gateway's metrics listener (written into a new clinic's gateway.toml)
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Where the gateway listens for WireGuard, UDP (written into a new clinic's gateway.toml)
    /// [default: 0.0.0.0:51820, or another free port when that one is taken]
    #[arg(long, value_name = "ADDR")]
    wg_listen: Option<SocketAddr>,
    /// Where the gateway's EST enrollment listener listens (written into a new clinic's
    /// gateway.toml and est.url)
    #[arg(long, default_value = "127.0.0.1:8444")]
    est_listen: SocketAddr,
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.join("gateway.toml").exists() {
        println!("Reusing the demo clinic in {}.", dir.display());
    } else {
        if dir.join("ca.pem").exists() {
            return Err(Error::Refused(format!(
                "{} holds a CA but no gateway.toml: it is not a complete demo clinic; use another --dir",
                dir.display()
            )));
        }
        create(dir, args)?;
        println!("Created a demo clinic in {}.", dir.display());
    }
    let verdict = verify::verify(
        &dir.join("ca.pem"),
        Some(&dir.join("crl.pem")),
        &dir.join("terminal.pem"),
        time::OffsetDateTime::now_utc(),
    )?;
    if let Verdict::Invalid(why) = verdict {
        println!("Note: terminal.pem is not valid now ({why}); the gateway will refuse it.");
    }
    if args.setup_only {
        print_files(dir);
        print_by_hand(dir);
        return Ok(ExitCode::SUCCESS);
    }
    run_clinic(dir)
}

fn create(dir: &Path, args: &DemoArgs) -> Result<()> {
    // A demo CA has no passphrase so that the demo runs unattended; a real one always has one.
    ca::init(
        dir,
        "Kakehashi Demo Clinic CA",
        3650,
        KeyAlgorithm::EcdsaP256,
        None,
    )?;
    let mut ca = Ca::open(dir)?;
    let signer = ca.unlock(|| Err(Error::Refused("the demo CA key is not encrypted".into())))?;
    let request = |profile, name: &str, sans: Vec<San>| Request {
        profile,
        name: name.into(),
        sans,
        days: 365,
        replace: false,
        key: KeyAlgorithm::EcdsaP256.name().into(),
    };
    let p256 = KeyAlgorithm::EcdsaP256;
    ca.issue_to_files(
        &signer,
        &request(Profile::Terminal, "reception-1", vec![]),
        p256,
        &dir.join("terminal.pem"),
        &dir.join("terminal.key"),
    )?;
    let server_names = vec![
        San::Dns(ENGINE_HOST.into()),
        San::Dns("localhost".into()),
        San::Ip([127, 0, 0, 1].into()),
    ];
    ca.issue_to_files(
        &signer,
        &request(Profile::Server, "gateway", server_names),
        p256,
        &dir.join("server.pem"),
        &dir.join("server.key"),
    )?;
    let crl = ca.crl(&signer, 7)?;
    files::write_atomic(&dir.join("crl.pem"), crl.pem().as_bytes(), files::PUBLIC)?;

    let password = Passphrase::new(random_hex(12)?);
    files::write_atomic(
        &dir.join("terminal.p12.password"),
        format!("{}\n", password.expose()).as_bytes(),
        files::SECRET,
    )?;
    let bundle = p12::export(
        &dir.join("terminal.pem"),
        &dir.join("terminal.key"),
        &dir.join("ca.pem"),
        &password,
        p12::Encryption::Modern,
    )?;
    files::write_atomic(&dir.join("terminal.p12"), &bundle, files::SECRET)?;

    // The gateway's own client certificate towards the cloud, and the demo cloud's server
    // certificate. A real cloud has its operator's CA; the demo's clinic CA plays both parts.
    ca.issue_to_files(
        &signer,
        &request(Profile::Uplink, "demo-gateway-uplink", vec![]),
        p256,
        &dir.join("uplink.pem"),
        &dir.join("uplink.key"),
    )?;
    let cloud_names = vec![San::Dns("localhost".into()), San::Ip([127, 0, 0, 1].into())];
    ca.issue_to_files(
        &signer,
        &request(Profile::Server, "demo-cloud-engine", cloud_names),
        p256,
        &dir.join("engine.pem"),
        &dir.join("engine.key"),
    )?;

    // The engine account the gateway uses upstream, and the clinic's staff account.
    files::write_atomic(&dir.join("upstream.password"), b"ormaster\n", files::SECRET)?;
    let staff_password = random_hex(8)?;
    let data = dir.join("data");
    let store = |e: crate::store::StoreError| Error::Refused(e.to_string());
    let conn = crate::store::open(&data).map_err(store)?;
    crate::store::inventory::add(
        &conn,
        TERMINAL,
        Some("the demo's reception PC"),
        engine_proxy::scope::Scopes::ALL,
    )
    .map_err(store)?;
    let wg_listen = wg_listen(args)?;
    let wg_endpoint = match wg_listen.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), wg_listen.port()),
        _ => wg_listen,
    };
    let wg_section = wireguard_toml(wg_listen, wg_endpoint);
    enroll_wg_terminal(dir, &conn, &data, &wg_section, &wg_endpoint.to_string())?;
    let hash = crate::store::users::hash_password(staff_password.as_bytes()).map_err(store)?;
    crate::store::users::add(&conn, USER, &hash, None, engine_proxy::scope::Scopes::ALL).map_err(store)?;
    files::write_atomic(
        &dir.join("user.txt"),
        format!("{USER}:{staff_password}\n").as_bytes(),
        files::SECRET,
    )?;

    files::write_atomic(
        &dir.join("engine.toml"),
        engine_toml(args).as_bytes(),
        files::PUBLIC,
    )?;
    files::write_atomic(
        &dir.join("est.url"),
        format!("https://{}{}\n", args.est_listen, crate::est::PREFIX).as_bytes(),
        files::PUBLIC,
    )?;
    // The demo vendor's firmware signing key (unencrypted in the demo only) and the public key
    // the appliance pins: `kakehashi firmware build --key firmware.key` makes images it installs.
    let (firmware_key, firmware_pub) =
        ::firmware::key::generate().map_err(|e| Error::Refused(format!("the demo firmware key: {e}")))?;
    files::write_atomic(&dir.join("firmware.key"), firmware_key.as_bytes(), files::SECRET)?;
    files::write_atomic(&dir.join("firmware.pub"), firmware_pub.as_bytes(), files::PUBLIC)?;
    // The age identity that restores the demo's backups (in the demo only: a real one stays with
    // the clinic and the vendor) and the directory they go to (a USB disk or a NAS mount).
    let backup_key = provisioning_shared::device::Identity::generate();
    files::write_atomic(
        &dir.join("backup.key"),
        backup_key.to_text().as_bytes(),
        files::SECRET,
    )?;
    files::create_dir(&dir.join("backups"), 0o700)?;
    // Last: gateway.toml marks a complete demo clinic.
    files::write_atomic(
        &dir.join("gateway.toml"),
        gateway_toml(args, &wg_section, &backup_key.recipient()).as_bytes(),
        files::PUBLIC,
    )
}

/// The WireGuard UDP address: `--wg-listen`, else WireGuard's customary port when it is free,
/// else any free port (as a second demo on the same machine needs).
fn wg_listen(args: &DemoArgs) -> Result<SocketAddr> {
    if let Some(listen) = args.wg_listen {
        return Ok(listen);
    }
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), WG_PORT);
    let port = std::net::UdpSocket::bind(any)
        .or_else(|_| std::net::UdpSocket::bind(SocketAddr::new(any.ip(), 0)))
        .and_then(|s| s.local_addr())
        .map_err(|e| Error::Refused(format!("cannot find a free UDP port for WireGuard: {e}")))?
        .port();
    Ok(SocketAddr::new(any.ip(), port))
}

/// Registers the WireGuard terminal with the very `[wireguard]` section gateway.toml gets (parsed
/// here with the gateway's own defaults), and writes `terminal-wg.conf`, `.png` and `.url`.
fn enroll_wg_terminal(
    dir: &Path,
    conn: &rusqlite::Connection,
    data: &Path,
    section: &str,
    endpoint: &str,
) -> Result<()> {
    use crate::cli::terminal::{self, Outputs};
    #[derive(serde::Deserialize)]
    struct Section {
        wireguard: crate::config::WireGuard,
    }
    let mut wg = toml::from_str::<Section>(section)
        .map_err(|e| Error::Refused(format!("the demo's [wireguard] section: {e}")))?
        .wireguard;
    wg.private_key = Some(data.join(crate::config::GATEWAY_KEY_FILE));
    let outputs = Outputs {
        config: dir.join(format!("{WG_TERMINAL}.conf")),
        qr_png: Some(dir.join(format!("{WG_TERMINAL}.png"))),
        psk: true,
    };
    let how = crate::store::inventory::Enroll::New {
        note: Some("the demo's WireGuard terminal (a tablet)"),
        scopes: engine_proxy::scope::Scopes::ALL,
    };
    terminal::enroll_wireguard(conn, &wg, endpoint, WG_TERMINAL, how, &outputs)
        .map_err(|e| Error::Refused(e.to_string()))?;
    files::write_atomic(
        &dir.join(format!("{WG_TERMINAL}.url")),
        format!("http://{}:{WG_API_PORT}\n", wg.address.address).as_bytes(),
        files::PUBLIC,
    )
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut secret = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| Error::Crypto {
        what: "random number generator",
        detail: "failed".into(),
    })?;
    Ok(hex::encode(secret))
}

fn engine_toml(args: &DemoArgs) -> String {
    format!(
        r#"# The demo's cloud engine: `kakehashi engine-sim --config engine.toml`.
# Paths are relative to this file.
listen = "{listen}"
db = "engine.db"
seed = "demo"

[[users]]
id = "ormaster"
password = "ormaster"

[tls]
cert = "engine.pem"
key = "engine.key"
client_ca = "ca.pem"      # like the cloud: only clients with a certificate (the gateway's uplink)
"#,
        listen = args.engine_listen
    )
}

fn wireguard_toml(listen: SocketAddr, endpoint: SocketAddr) -> String {
    // Commented as the rest of gateway.toml: values left, comments in one column.
    let line = |setting: String, comment: &str| format!("{setting:<29} # {comment}\n");
    [
        "\n[wireguard]\n".to_owned(),
        line(format!("listen = \"{listen}\""), "UDP: every WireGuard terminal sends here"),
        line(format!("address = \"{WG_NET}\""), "the gateway in the tunnel; terminals get the next free addresses"),
        line(format!("endpoint = \"{endpoint}\""), "written into terminal configs as the gateway's address"),
        format!("# private_key: data/wireguard.key; port {WG_API_PORT} on the tunnel address serves the api listener\n"),
    ]
    .concat()
}

fn gateway_toml(args: &DemoArgs, wireguard: &str, backup_recipient: &str) -> String {
    format!(
        r#"# The demo clinic's gateway: `kakehashi gateway run --config gateway.toml`.
# Paths are relative to this file. Every key is explained in docs/configuration.md.
data_dir = "data"             # inventory and users (gateway.db), audit log (audit.db)

[tls]
cert = "server.pem"           # the gateway's server certificate, named as the engine
key = "server.key"
client_ca = "ca.pem"          # terminals need a certificate from this CA ...
crl = "crl.pem"               # ... that is not revoked

[[listener]]
address = "{listen}"
kind = "api"                  # the engine API: ID and password, then the cloud engine

[upstream]
url = "https://{engine}"
ca = "ca.pem"                 # trusted for the engine's certificate
cert = "uplink.pem"           # the gateway's own client certificate
key = "uplink.key"
user = "ormaster"             # the clinic's engine account
password_file = "upstream.password"
{wireguard}
[est]                         # terminal enrollment (EST, RFC 7030): est.url has its base URL
listen = "{est}"
ca_dir = "."                  # the clinic CA (ca.pem, ca.key: unencrypted in the demo only)
days = 365                    # lifetime of the certificates it issues

[auth]
person = true                 # ID and password on every request (user.txt has the demo's)
lockout_failures = 5
lockout_window_secs = 900

[admin]
address = "{admin}"           # Prometheus metrics at /metrics

[firmware]                    # signed updates (docs/firmware.md); firmware.key signs the demo's images
public_key = "firmware.pub"   # the vendor's firmware key this appliance pins
slots_dir = "slots"           # slots a/ and b/, the current symlink, state.json
settle_secs = 30              # a new version commits itself once every health check passes in this time

[backup]                      # `kakehashi backup run` (docs/backup.md); backup.key restores them
dir = "backups"               # on an appliance: a USB disk or a NAS mount
# sftp = "sftp://kakehashi@backup.vendor.example/srv/kakehashi"  # or, instead of dir, the vendor's server:
# known_hosts = "backup-known-hosts"  # its host key, pinned
# identity = "backup-ssh.key"         # the appliance's SSH key (mode 0600)
recipients = ["{backup_recipient}"]
keep = 14                     # archives kept; older ones go once a new one is verified
"#,
        listen = args.listen,
        engine = args.engine_listen,
        admin = args.admin_listen,
        est = args.est_listen,
    )
}

/// A child process that printed `READY <URL>`; killed and reaped when dropped, and ended by the
/// kernel if the demo dies without dropping it (`kill -9`: see [`end_with_demo`]).
struct Process {
    name: &'static str,
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first: both shut down gracefully (the gateway flushes its audit log).
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kakehashi ARGS` and waits for its READY line (its logs go to our stderr).
///
/// Called on the main thread only: the kernel's parent-death signal fires when the thread that
/// started the child ends, and the main thread lives as long as the demo.
fn start(name: &'static str, args: &[&std::ffi::OsStr]) -> Result<Process> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Refused(format!("cannot find my own binary: {e}")))?;
    let mut child = Command::new(exe)
        .args(args)
        .env(DEMO_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Refused(format!("cannot start {name}: {e}")))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout
            .into_iter()
            .flat_map(|s| BufReader::new(s).lines().map_while(|l| l.ok()))
        {
            if let Some(url) = line.strip_prefix("READY ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let mut process = Process {
        name,
        child,
        url: String::new(),
    };
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(url) => {
            process.url = url;
            Ok(process)
        }
        Err(_) => Err(Error::Refused(format!(
            "{name} did not start (no READY line within 20 s); its messages are above"
        ))),
    }
}

fn run_clinic(dir: &Path) -> Result<ExitCode> {
    let config = |f: &str| dir.join(f).into_os_string();
    let engine = start(
        "the cloud engine (engine-sim)",
        &["engine-sim".as_ref(), "--config".as_ref(), &config("engine.toml")],
    )?;
    let gateway = start(
        "the gateway",
        &[
            "gateway".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            &config("gateway.toml"),
        ],
    )?;
    // For the failover walk-through: `kill -STOP` makes the cloud a black hole.
    if let Err(e) = std::fs::write(dir.join("engine.pid"), format!("{}\n", engine.child.id())) {
        eprintln!(
            "kakehashi demo: cannot write {}: {e}",
            dir.join("engine.pid").display()
        );
    }
    print_files(dir);
    let user = std::fs::read_to_string(dir.join("user.txt")).unwrap_or_default();
    let d = dir.display();
    println!(
        "
The cloud engine (engine-sim) listens on {engine_url}; the gateway in front of it on {gw}.
Fetch a patient through the gateway as the terminal {TERMINAL:?}, signed in as {user_id:?}:

  curl --cacert {d}/ca.pem --cert {d}/terminal.pem --key {d}/terminal.key -u '{user}' '{gw}/api01rv2/patientgetv2?id=1&format=json'

Without -u the gateway answers 401; without --cert it refuses the TLS handshake. Then:
  kakehashi audit export --config {d}/gateway.toml      every decision the gateway made
  kakehashi terminal list --config {d}/gateway.toml     the inventory
  curl {metrics}   the gateway's metrics

Take the line down (the cloud stops answering), then read and write through the gateway:
  kill -STOP $(cat {d}/engine.pid)
  curl ... '{gw}/api01rv2/patientgetv2?id=1&format=json'       from the cache, X-Hybridmode: emergency
  curl ... -H 'Content-Type: application/json' -d '{{\"acceptreq\":{{\"Patient_ID\":\"1\"}}}}' \\
       '{gw}/orca11/acceptmodv2?class=01&format=json'            journaled: Api_Result W90
  kakehashi journal list --config {d}/gateway.toml      what waits for the cloud
  kill -CONT $(cat {d}/engine.pid)                      10 s later the journal drains, back to normal
{wireguard}{est}
Ctrl-C stops both.",
        engine_url = engine.url,
        gw = gateway.url,
        user_id = user.trim().split(':').next().unwrap_or(""),
        user = user.trim(),
        wireguard = wireguard_walkthrough(dir, user.trim()),
        est = est_walkthrough(dir, &gateway.url, user.trim()),
        metrics = crate::config::Config::load(&dir.join("gateway.toml"))
            .ok()
            .and_then(|c| c.admin.address)
            .map_or("(no [admin] address in gateway.toml)".into(), |a| format!("http://{a}/metrics")),
    );
    println!("READY {}", gateway.url);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    wait(vec![engine, gateway])
}

/// Runs until Ctrl-C or SIGTERM, or until one of the processes dies (then stops the other).
fn wait(mut processes: Vec<Process>) -> Result<ExitCode> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Refused(format!("cannot start a runtime for signals: {e}")))?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
        });
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            println!("Stopping the gateway and the cloud engine.");
            processes.reverse();
            drop(processes);
            return Ok(ExitCode::SUCCESS);
        }
        for p in &mut processes {
            if let Ok(Some(status)) = p.child.try_wait() {
                eprintln!("kakehashi demo: {} exited ({status}); stopping.", p.name);
                return Ok(ExitCode::FAILURE);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The WireGuard part of the walk-through, for a clinic that has the WireGuard terminal.
fn wireguard_walkthrough(dir: &Path, user: &str) -> String {
    let Ok(url) = std::fs::read_to_string(dir.join(format!("{WG_TERMINAL}.url"))) else {
        return String::new();
    };
    let d = dir.display();
    format!(
        "
Or be the WireGuard terminal {WG_TERMINAL:?} (as root, with wireguard-tools; docs/wireguard.md shows
the same inside a network namespace, which leaves the machine's own routes alone):
  wg-quick up {d}/{WG_TERMINAL}.conf
  curl -u '{user}' '{url}/api01rv2/patientgetv2?id=1&format=json'
  wg-quick down {d}/{WG_TERMINAL}.conf
",
        url = url.trim()
    )
}

/// The enrollment part of the walk-through: a new terminal from token to first request with
/// openssl and curl only.
fn est_walkthrough(dir: &Path, gateway: &str, user: &str) -> String {
    let Ok(url) = std::fs::read_to_string(dir.join("est.url")) else {
        return String::new();
    };
    let d = dir.display();
    format!(
        "
Enroll a new terminal in seconds (EST, RFC 7030), with openssl and curl only:
  kakehashi terminal add tablet-2 --enroll --config {d}/gateway.toml        prints a one-time TOKEN
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tablet-2.key \\
       -subj /CN=tablet-2 -outform DER | openssl base64 > tablet-2.csr.b64
  curl --cacert {d}/ca.pem -u tablet-2:TOKEN -H 'Content-Type: application/pkcs10' \\
       --data-binary @tablet-2.csr.b64 {url}/simpleenroll | openssl base64 -d | \\
       openssl pkcs7 -inform DER -print_certs -out tablet-2.pem
  curl --cacert {d}/ca.pem --cert tablet-2.pem --key tablet-2.key -u '{user}' '{gateway}/api01rv2/patientgetv2?id=1&format=json'
Renew it before it expires (its current certificate authenticates):
  curl --cacert {d}/ca.pem --cert tablet-2.pem --key tablet-2.key -H 'Content-Type: application/pkcs10' \\
       --data-binary @tablet-2.csr.b64 {url}/simplereenroll | openssl base64 -d | openssl pkcs7 -inform DER -print_certs
  kakehashi cert list --dir {d} --expiring-within 30       what expires soon
  kakehashi terminal revoke tablet-2 --config {d}/gateway.toml    revoked at once (CRL, inventory; the gateway reloads on SIGHUP)
",
        url = url.trim()
    )
}

fn print_files(dir: &Path) {
    let d = dir.display();
    println!(
        "
The demo clinic in {d}:
  ca.pem, ca.key            the clinic CA (terminals and the gateway trust it); `kakehashi cert` works on {d}
  terminal.pem, .key        the terminal {TERMINAL:?} (registered in the gateway's inventory)
  terminal.p12              the same for Windows/macOS/Java, password in terminal.p12.password
  terminal-wg.conf, .png    the WireGuard terminal {WG_TERMINAL:?}: its wg-quick config and QR code
  terminal-wg.url           the engine API's URL inside the tunnel
  est.url                   the base URL of the EST enrollment listener (…/.well-known/est)
  user.txt                  the staff account, ID:password
  server.pem, .key          the gateway's server certificate ({ENGINE_HOST}, localhost, 127.0.0.1)
  uplink.pem, .key          the gateway's client certificate towards the cloud
  engine.pem, .key          the demo cloud engine's server certificate
  crl.pem                   the clinic CA's CRL
  engine.toml, gateway.toml the two processes' configuration
  firmware.key, .pub        the demo vendor's firmware signing key and the key the appliance pins
  backup.key, backups/      the age identity that restores the demo's backups, and where
                            `kakehashi backup run --config {d}/gateway.toml` writes them
  engine.pid                the cloud engine's process id (while the demo runs)
  data/                     the gateway's inventory, users, audit log, read cache and write journal,
                            and its WireGuard key (wireguard.key)"
    );
}

fn print_by_hand(dir: &Path) {
    let d = dir.display();
    println!(
        "
Start the two processes by hand (each prints READY <URL> once it listens):
  kakehashi engine-sim --config {d}/engine.toml
  kakehashi gateway run --config {d}/gateway.toml"
    );
}

/// For `gateway run` and `engine-sim` started by the demo (`KAKEHASHI_DEMO_PID` set): end with
/// the demo, however it ends. The kernel sends SIGTERM (so the gateway still shuts down
/// gracefully and flushes its audit log) when the demo dies, even by `kill -9`, which would
/// otherwise leave both children running and holding the demo's ports. Without `unsafe` there is
/// no `pre_exec` to ask for it before `exec`, so the child asks itself, first thing, and then
/// checks that its parent is still the demo: if the demo died before the request, nobody would
/// send the signal, so the child exits at once.
///
/// Does nothing when the variable is not set (a gateway started by hand or by systemd).
pub fn end_with_demo() -> std::result::Result<(), String> {
    let Some(value) = std::env::var_os(DEMO_PID_ENV) else {
        return Ok(());
    };
    let demo = value
        .to_str()
        .and_then(|v| v.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{DEMO_PID_ENV} is {value:?}, not a process id"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .map_err(|e| format!("cannot ask to end with the demo (prctl PR_SET_PDEATHSIG): {e}"))?;
    if rustix::process::getppid() != Some(demo) {
        return Err(format!(
            "the demo that started this process (pid {}) has ended; not starting",
            demo.as_raw_nonzero()
        ));
    }
    Ok(())
}
