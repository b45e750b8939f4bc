//! Running the binary and peers, and checking that nothing changed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `kakehashi` binary under test: `KAKEHASHI_BIN`, or the workspace build of the same profile.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KAKEHASHI_BIN") {
        return p.into();
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join(profile).join("kakehashi");
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "{} is missing: build it first (`cargo build --release --bin kakehashi`, as scripts/test does)",
            path.display()
        )
    });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(newer) = newest_source(&workspace).filter(|(t, _)| *t > built) {
        panic!(
            "{} is older than {}: rebuild it (`cargo build --release --bin kakehashi`, as scripts/test does)",
            path.display(),
            newer.1.display()
        );
    }
    path
}

/// The most recently modified source file of the crates the binary is built from.
fn newest_source(workspace: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut stack: Vec<PathBuf> = [
        "gateway", "cert-tool", "provisioning", "provisioning/shared", "engine-proxy", "engine-proxy/sim",
        "firmware",
    ]
    .iter()
    .map(|c| workspace.join(c).join("src"))
    .collect();
    let mut newest = None;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(t) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, path));
            }
        }
    }
    newest
}

/// What a finished command left.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts failure with exit code 1 and a message containing every one of `needles`.
    #[track_caller]
    pub fn fails_with(self, needles: &[&str]) -> Run {
        assert_eq!(
            self.code, 1,
            "expected exit 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let all = format!("{}{}", self.stdout, self.stderr);
        for n in needles {
            assert!(
                all.contains(n),
                "expected {n:?} in the message\nstdout:\n{}\nstderr:\n{}",
                self.stdout,
                self.stderr
            );
        }
        self
    }
}

/// Runs `kakehashi ARGS` with no terminal on stdin and no passphrase, password, configuration or
/// data directory in the environment.
pub fn kakehashi(args: &[&str]) -> Run {
    kakehashi_env(args, &[])
}

/// Runs `kakehashi ARGS` with extra environment variables.
pub fn kakehashi_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("KAKEHASHI_CA_PASSPHRASE")
        .env_remove("KAKEHASHI_USER_PASSWORD")
        .env_remove("KAKEHASHI_DATA_DIR")
        .env_remove("KAKEHASHI_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("run kakehashi"))
}

/// Runs a command line written as one would type it: words split on white space, the first naming
/// `kakehashi` or a peer tool. Test paths never hold spaces; an argument that does needs
/// [`kakehashi`] or [`tool`].
pub fn sh(line: &str) -> Run {
    let mut words = line.split_whitespace();
    let program = words.next().expect("a command");
    let args: Vec<&str> = words.collect();
    if program == "kakehashi" {
        kakehashi(&args)
    } else {
        tool(program, &args)
    }
}

/// Runs a peer tool (openssl, curl, ...) and returns what it did.
pub fn tool(program: &str, args: &[&str]) -> Run {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (scripts/test installs it)"));
    Run::from(output)
}

/// Every file below `dir` with its bytes and mode: compare two to prove nothing changed. A file
/// that vanishes while it is being read (a running process's staged or lock file) is transient,
/// not state, and is left out.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Err(e) if gone(&e) && d != dir => continue,
            entries => entries.expect("read_dir"),
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let meta = match std::fs::symlink_metadata(&path) {
                Err(e) if gone(&e) => continue,
                meta => meta.expect("metadata"),
            };
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = match std::fs::read(&path) {
                    Err(e) if gone(&e) => continue,
                    bytes => bytes.expect("read"),
                };
                let rel = path.strip_prefix(dir).expect("prefix").to_path_buf();
                out.insert(rel, (bytes, meta.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

/// Asserts two snapshots are equal, naming the first difference.
#[track_caller]
pub fn assert_unchanged(
    before: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    after: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
) {
    let names = |m: &BTreeMap<PathBuf, (Vec<u8>, u32)>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "the set of files changed");
    for (path, v) in before {
        assert!(after[path] == *v, "{} changed", path.display());
    }
}

/// The mode bits of a file.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Writes a file, creating parents.
/// Writes a file as an operator would write a secret: mode 0600 (the binary refuses passphrase
/// files that others can read). A test that needs another mode sets it after.
pub fn write(path: &Path, data: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A path as &str (test paths are always UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A free loopback TCP port (bound and released: good enough for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A free loopback UDP port, for the WireGuard listener: clinics started in parallel must not all
/// get the demo's preferred 51820.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// Every address `kakehashi demo` listens on, each a free port chosen here: no test depends on
/// the demo's defaults (8443, 8444, 9090, 18000, 51820) being free on the machine.
pub struct DemoPorts {
    pub listen: String,
    pub engine: String,
    pub admin: String,
    pub wg: String,
    pub est: String,
}

impl DemoPorts {
    /// Free ports on 127.0.0.1; WireGuard on `wg_host` (`0.0.0.0` for terminals in other
    /// network namespaces).
    pub fn new(wg_host: &str) -> DemoPorts {
        // All bound at once, then released: one port released before the next is chosen may be
        // chosen again (a gateway whose EST listener has its API listener's address).
        let tcp: Vec<_> = (0..4)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let local = |i: usize| tcp[i].local_addr().expect("a free port").to_string();
        DemoPorts {
            listen: local(0),
            engine: local(1),
            admin: local(2),
            wg: format!("{wg_host}:{}", free_udp_port()),
            est: local(3),
        }
    }

    /// The demo's options for these addresses.
    pub fn args(&self) -> Vec<&str> {
        vec![
            "--listen", &self.listen, "--engine-listen", &self.engine, "--admin-listen", &self.admin,
            "--wg-listen", &self.wg, "--est-listen", &self.est,
        ]
    }

    /// [`DemoPorts::args`] as one line, for [`sh`].
    pub fn line(&self) -> String {
        self.args().join(" ")
    }
}

/// A `kakehashi` server process (engine-sim, gateway) that printed `READY <URL>`; SIGKILLed on drop.
pub struct Server {
    child: std::process::Child,
    pub url: String,
}

impl Server {
    /// Starts `kakehashi ARGS` and waits up to 10 s for its READY line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(Command::new(bin()).args(args), args, env)
    }

    /// [`Server::start`] inside network namespace `ns` (`ip netns exec` execs the binary, so
    /// the process is still the server's own).
    pub fn start_in(ns: &str, args: &[&str]) -> Server {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(bin()).args(args);
        Server::spawn(&mut command, args, &[])
    }

    fn spawn(command: &mut Command, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kakehashi");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("READY ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(url) => Server { child, url },
            Err(_) => {
                let _ = child.kill();
                panic!("kakehashi {args:?} did not print READY within 10 s");
            }
        }
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The live (newest) segment of the audit log in the data directory `data`: `data/audit/*.db`
/// (named by first id, zero-padded, so the last name is the newest).
pub fn audit_live(data: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data.join("audit"))
        .expect("the audit log's segments")
        .map(|e| e.expect("list").path())
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}
