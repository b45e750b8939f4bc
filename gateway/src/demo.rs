//! `kakehashi demo`: a working demo clinic in one command.
//!
//! The directory it leaves is a contract that people and scripts rely on (DESIGN.md, "The demo
//! directory is a contract"): `ca.pem`, `terminal.pem`, `terminal.key`, `terminal.p12` and
//! `terminal.p12.password` keep their names; new files are added as features land. Running it
//! again on the same directory reuses the clinic instead of replacing it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cert_tool::ca::{self, Ca, Request};
use cert_tool::keys::{KeyAlgorithm, Passphrase};
use cert_tool::profile::{Profile, San};
use cert_tool::verify::{self, Verdict};
use cert_tool::{Error, Result, files, p12};

/// The host name terminals use for the engine; the gateway's server certificate carries it.
const ENGINE_HOST: &str = "engine.demo-clinic.test";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo clinic (created if missing; reused if it holds one already)
    #[arg(long, default_value = "kakehashi-demo")]
    dir: PathBuf,
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    if dir.join("ca.pem").exists() {
        println!("Reusing the demo clinic in {}.", dir.display());
    } else {
        create(dir)?;
        println!("Created a demo clinic in {}.", dir.display());
    }
    let verdict = verify::verify(
        &dir.join("ca.pem"),
        Some(&dir.join("crl.pem")),
        &dir.join("terminal.pem"),
        time::OffsetDateTime::now_utc(),
    )?;
    let status = match verdict {
        Verdict::Valid(what) => format!("valid: {what}"),
        Verdict::Invalid(why) => format!("INVALID: {why}"),
    };
    print_guide(dir, &status);
    Ok(ExitCode::SUCCESS)
}

fn create(dir: &Path) -> Result<()> {
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

    let mut secret = [0u8; 12];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| Error::Crypto {
        what: "random number generator",
        detail: "failed".into(),
    })?;
    let password = Passphrase::new(hex::encode(secret));
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
    files::write_atomic(&dir.join("terminal.p12"), &bundle, files::SECRET)
}

fn print_guide(dir: &Path, status: &str) {
    let d = dir.display();
    println!(
        "
The clinic's PKI:
  {d}/ca.pem                 the clinic CA (terminals trust it); its key is {d}/ca.key
  {d}/terminal.pem, .key     the terminal \"reception-1\" (clientAuth)
  {d}/terminal.p12           the same for Windows/macOS/Java, password in terminal.p12.password
  {d}/server.pem, .key       the gateway's server certificate for {ENGINE_HOST}
  {d}/crl.pem                the CRL

terminal.pem is {status}

Try it:
  kakehashi cert list --dir {d}
  kakehashi cert inspect {d}/terminal.p12 --password-file {d}/terminal.p12.password
  openssl verify -CAfile {d}/ca.pem -crl_check -CRLfile {d}/crl.pem {d}/terminal.pem
  kakehashi cert revoke --dir {d} --name reception-1 --reason key-compromise
  kakehashi cert crl --dir {d} --out {d}/crl.pem
  kakehashi cert verify --ca {d}/ca.pem --crl {d}/crl.pem {d}/terminal.pem

Not in this build yet: the gateway itself (TLS and WireGuard front doors, ID/password, the engine
proxy and failover). Until then the demo is the clinic's PKI; see README.md, \"Status\"."
    );
}
