//! EST enrollment on the appliance (RFC 7030), judged by clients we did not write: `openssl req`
//! makes the key and CSR, curl posts it, `openssl pkcs7 -print_certs` reads the answer, and curl
//! then uses the new certificate against the gateway. Every refusal is shown to change nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

/// The demo clinic's EST base URL (`est.url`).
fn est_url(c: &Clinic) -> String {
    std::fs::read_to_string(c.path("est.url"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `terminal add --name NAME --enroll --json`: the token.
fn token(c: &Clinic, name: &str) -> String {
    let out = sh(&format!(
        "kakehashi terminal add --name {name} --enroll --json --data-dir {}",
        c.data()
    ))
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["name"], name);
    v["token"].as_str().expect("a token").to_owned()
}

/// A new P-256 key `dir/NAME.key` and a CSR for `cn`, base64 DER in `dir/NAME.csr.b64`: the
/// body EST wants. Returns the CSR file.
pub(crate) fn csr(dir: &Path, name: &str, cn: &str) -> String {
    let key = dir.join(format!("{name}.key"));
    let der = dir.join(format!("{name}.csr.der"));
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -subj /CN={cn} -outform DER -out {}",
        s(&key),
        s(&der)
    ))
    .ok();
    let b64 = dir.join(format!("{name}.csr.b64"));
    sh(&format!("openssl base64 -in {} -out {}", s(&der), s(&b64))).ok();
    s(&b64).to_owned()
}

/// `curl` an EST operation: the status and the body (base64 PKCS#7, or the refusal's reason).
fn post(c: &Clinic, op: &str, options: &str, body: &str) -> (u16, String) {
    let out = sh(&format!(
        "curl -s -w ~STATUS~%{{http_code}} --cacert {} -H Content-Type:application/pkcs10 --data-binary @{body} {options} {}/{op}",
        s(&c.path("ca.pem")),
        est_url(c)
    ));
    let (text, code) = out.stdout.rsplit_once("~STATUS~").expect("status");
    (code.trim().parse().expect("status"), text.to_owned())
}

/// The certificates of a base64 PKCS#7 answer, as `openssl pkcs7 -print_certs` writes them.
pub(crate) fn print_certs(dir: &Path, answer: &str, out: &str) -> String {
    let b64 = dir.join(format!("{out}.p7.b64"));
    write(&b64, answer);
    let der = dir.join(format!("{out}.p7"));
    sh(&format!("openssl base64 -d -in {} -out {}", s(&b64), s(&der))).ok();
    let pem = dir.join(format!("{out}.pem"));
    sh(&format!(
        "openssl pkcs7 -inform DER -in {} -print_certs -out {}",
        s(&der),
        s(&pem)
    ))
    .ok();
    s(&pem).to_owned()
}

fn serial(pem: &str) -> String {
    sh(&format!("openssl x509 -in {pem} -noout -serial"))
        .ok()
        .trim()
        .to_owned()
}

fn curl_as(c: &Clinic, cert: &str, key: &str) -> u16 {
    c.curl(
        &format!(
            "--cacert {} --cert {cert} --key {key} -u {}",
            s(&c.path("ca.pem")),
            c.user
        ),
        PATIENT,
    )
    .0
}

/// The CA directory's files, the inventory and the CA's index, as [`state`] takes them.
type State = (
    std::collections::BTreeMap<std::path::PathBuf, (Vec<u8>, u32)>,
    String,
    String,
);

/// What the appliance holds that an enrollment would change: the CA directory's files (not the
/// data directory, whose audit log records every refusal), the inventory and the CA's index.
fn state(c: &Clinic) -> State {
    let mut files = snapshot(&c.path(""));
    files.retain(|p, _| !p.starts_with("data") && !p.to_string_lossy().contains(".lock"));
    let terminals = sh(&format!("kakehashi terminal list --json --data-dir {}", c.data())).ok();
    let certs = sh(&format!("kakehashi cert list --json --dir {}", s(&c.path("")))).ok();
    (files, terminals, certs)
}

#[test]
fn openssl_and_curl_enroll_a_terminal_that_connects_at_once_renews_and_is_revoked() {
    let c = Clinic::start("");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    assert!(est_url(&c).starts_with("https://127.0.0.1:") && est_url(&c).ends_with("/.well-known/est"));

    // cacerts: the clinic CA, PKCS#7 certs-only, base64.
    let out = sh(&format!(
        "curl -s -D {} --cacert {} {}/cacerts -o {}",
        s(&w.join("headers")),
        s(&c.path("ca.pem")),
        est_url(&c),
        s(&w.join("cacerts.b64"))
    ));
    assert_eq!(out.code, 0);
    let headers = std::fs::read_to_string(w.join("headers")).unwrap().to_lowercase();
    assert!(
        headers.contains("content-type: application/pkcs7-mime"),
        "{headers}"
    );
    assert!(headers.contains("content-transfer-encoding: base64"), "{headers}");
    let cacerts = print_certs(
        w,
        &std::fs::read_to_string(w.join("cacerts.b64")).unwrap(),
        "cacerts",
    );
    let fingerprint = |pem: &str| sh(&format!("openssl x509 -in {pem} -noout -fingerprint -sha256")).ok();
    assert_eq!(fingerprint(&cacerts), fingerprint(s(&c.path("ca.pem"))));

    // Token to working terminal.
    let started = Instant::now();
    let token = token(&c, "tablet-2");
    let body = csr(w, "tablet-2", "tablet-2");
    let (code, answer) = post(&c, "simpleenroll", &format!("-u tablet-2:{token}"), &body);
    assert_eq!(code, 200, "{answer}");
    let cert = print_certs(w, &answer, "tablet-2");
    let key = s(&w.join("tablet-2.key")).to_owned();
    assert_eq!(curl_as(&c, &cert, &key), 200, "the new terminal connects at once");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "token to working terminal took {elapsed:?}"
    );
    let subject = sh(&format!("openssl x509 -in {cert} -noout -subject -issuer")).ok();
    assert!(
        subject.contains("CN = tablet-2") && subject.contains("Kakehashi Demo Clinic CA"),
        "{subject}"
    );
    let list = sh(&format!("kakehashi terminal list --json --data-dir {}", c.data())).ok();
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert!(
        list.iter()
            .any(|t| t["name"] == "tablet-2" && t["enabled"] == true),
        "{list:?}"
    );

    // A token works once.
    let (code, why) = post(&c, "simpleenroll", &format!("-u tablet-2:{token}"), &body);
    assert_eq!(code, 401);
    assert!(why.contains("already used"), "{why}");

    // simplereenroll with the issued certificate returns a new one; the old one is superseded.
    let renewal = csr(w, "tablet-2b", "tablet-2");
    let (code, answer) = post(
        &c,
        "simplereenroll",
        &format!("--cert {cert} --key {key}"),
        &renewal,
    );
    assert_eq!(code, 200, "{answer}");
    let renewed = print_certs(w, &answer, "tablet-2-renewed");
    assert_ne!(serial(&renewed), serial(&cert));
    let key2 = s(&w.join("tablet-2b.key")).to_owned();
    assert_eq!(curl_as(&c, &renewed, &key2), 200);
    assert_eq!(
        curl_as(&c, &cert, &key),
        0,
        "the superseded certificate is refused"
    );
    assert!(c.audit_has("allow", "terminal enrolled with its one-time token"));
    assert!(c.audit_has("allow", "terminal certificate renewed"));
    assert_eq!(c.metric("est_enrollments_total"), 1);
    assert_eq!(c.metric("est_renewals_total"), 1);

    // Revocation on the appliance takes effect at once, without SIGHUP.
    let out = sh(&format!(
        "kakehashi terminal revoke tablet-2 --config {}",
        s(&c.path("gateway.toml"))
    ))
    .ok();
    assert!(
        out.contains("revoked certificate") && out.contains("disabled terminal tablet-2"),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while curl_as(&c, &renewed, &key2) != 0 {
        assert!(
            Instant::now() < deadline,
            "the revoked terminal is still admitted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let crl = sh(&format!("openssl crl -in {} -noout -text", s(&c.path("crl.pem")))).ok();
    assert!(crl.contains(&serial(&renewed).replace("serial=", "")), "{crl}");
    // A revoked certificate cannot renew itself either.
    let (code, _) = post(
        &c,
        "simplereenroll",
        &format!("--cert {renewed} --key {key2}"),
        &renewal,
    );
    assert_eq!(code, 0, "refused in the handshake");
    assert!(c.audit_has("deny", "client certificate revoked"));
}

#[test]
fn refused_enrollments_are_audited_and_change_nothing() {
    let c = Clinic::start("");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let token = token(&c, "tablet-3");
    let good = csr(w, "tablet-3", "tablet-3");
    let before = state(&c);

    // A CSR naming another terminal.
    let other = csr(w, "other", "reception-1");
    let (code, why) = post(&c, "simpleenroll", &format!("-u tablet-3:{token}"), &other);
    assert_eq!(code, 400);
    assert!(why.contains("names \"reception-1\""), "{why}");

    // A CSR whose signature does not verify: the last byte of the signature changed.
    let mut der = std::fs::read(w.join("tablet-3.csr.der")).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x55;
    let bad = w.join("bad.csr.b64");
    write(&bad, base64_lines(&der));
    let (code, why) = post(&c, "simpleenroll", &format!("-u tablet-3:{token}"), s(&bad));
    assert_eq!(code, 400);
    assert!(why.contains("signature does not verify"), "{why}");

    // Not base64, a wrong content type, no credentials, an unknown name.
    let junk = w.join("junk");
    write(&junk, "not a CSR!");
    assert_eq!(
        post(&c, "simpleenroll", &format!("-u tablet-3:{token}"), s(&junk)).0,
        400
    );
    let out = sh(&format!(
        "curl -s -w ~%{{http_code}} --cacert {} -u tablet-3:{token} --data-binary @{good} {}/simpleenroll",
        s(&c.path("ca.pem")),
        est_url(&c)
    ))
    .ok();
    assert!(
        out.contains("expected application/pkcs10") && out.ends_with("~415"),
        "{out}"
    );
    let (code, why) = post(&c, "simpleenroll", "", &good);
    assert_eq!(code, 401);
    assert!(why.contains("HTTP Basic"), "{why}");
    let (code, why) = post(&c, "simpleenroll", &format!("-u ghost:{token}"), &good);
    assert_eq!(code, 401);
    assert!(
        why.contains("no enrollment token for terminal \"ghost\""),
        "{why}"
    );

    // simplereenroll without a certificate, and with one whose CSR names someone else.
    let (code, why) = post(&c, "simplereenroll", "", &good);
    assert_eq!(code, 401);
    assert!(why.contains("current certificate"), "{why}");
    let reception = format!(
        "--cert {} --key {}",
        s(&c.path("terminal.pem")),
        s(&c.path("terminal.key"))
    );
    let (code, why) = post(&c, "simplereenroll", &reception, &good);
    assert_eq!(code, 400);
    assert!(why.contains("names \"tablet-3\""), "{why}");

    // Nothing else exists on this listener.
    let out = sh(&format!(
        "curl -s -w ~%{{http_code}} --cacert {} {}/../../api01rv2/patientgetv2",
        s(&c.path("ca.pem")),
        est_url(&c)
    ))
    .ok();
    assert!(out.ends_with("~404"), "{out}");
    assert_unchanged_state(&before, &state(&c));

    // Guessed tokens: five wrong tries lock it, then even the right one is refused.
    for left in (0..5).rev() {
        let (code, why) = post(
            &c,
            "simpleenroll",
            "-u tablet-3:00000000000000000000000000000000",
            &good,
        );
        assert_eq!(code, 401);
        assert!(why.contains(&format!("({left} tries left")), "{why}");
    }
    let (code, why) = post(&c, "simpleenroll", &format!("-u tablet-3:{token}"), &good);
    assert_eq!(code, 401);
    assert!(why.contains("locked after 5 wrong tries"), "{why}");
    assert_unchanged_state(&before, &state(&c));
    // The administrator sees it locked, and never the token itself.
    let tokens = sh(&format!(
        "kakehashi terminal tokens --json --data-dir {}",
        c.data()
    ))
    .ok();
    assert!(!tokens.contains(&token), "a token must never be listed");
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&tokens).unwrap();
    let t3 = tokens
        .iter()
        .find(|t| t["name"] == "tablet-3")
        .expect("tablet-3's token");
    assert_eq!(
        (&t3["state"], &t3["failures"]),
        (&serde_json::json!("locked"), &serde_json::json!(5))
    );

    // An expired token (its expiry moved into the past, as time would).
    let fresh = self::token(&c, "tablet-3");
    let db = rusqlite::Connection::open(c.path("data/gateway.db")).unwrap();
    db.execute(
        "UPDATE enrollment_tokens SET expires = '2020-01-01T00:00:00Z'",
        [],
    )
    .unwrap();
    let (code, why) = post(&c, "simpleenroll", &format!("-u tablet-3:{fresh}"), &good);
    assert_eq!(code, 401);
    assert!(why.contains("expired at 2020-01-01T00:00:00Z"), "{why}");
    assert_unchanged_state(&before, &state(&c));

    let denied = c
        .audit()
        .iter()
        .filter(|e| e["route"] == "est" && e["decision"] == "deny")
        .count();
    assert!(denied >= 15, "every refusal is audited ({denied})");
    assert!(c.metric("est_refusals_total") >= 15);

    // After all that, a fresh token still enrolls: the refusals left no trace in the way.
    let last = self::token(&c, "tablet-3");
    let (code, answer) = post(&c, "simpleenroll", &format!("-u tablet-3:{last}"), &good);
    assert_eq!(code, 200, "{answer}");
}

fn assert_unchanged_state(before: &State, after: &State) {
    assert_unchanged(&before.0, &after.0);
    assert_eq!(before.1, after.1, "the inventory changed");
    assert_eq!(before.2, after.2, "the CA's index changed");
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[test]
fn a_stale_crl_is_still_enforced_with_a_metric_until_a_fresh_one_arrives() {
    let c = Clinic::start("");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A second terminal, enrolled, so that there is one not on the CRL.
    let token = token(&c, "tablet-4");
    let body = csr(w, "tablet-4", "tablet-4");
    let (code, answer) = post(&c, "simpleenroll", &format!("-u tablet-4:{token}"), &body);
    assert_eq!(code, 200, "{answer}");
    let cert = print_certs(w, &answer, "tablet-4");
    let key = s(&w.join("tablet-4.key")).to_owned();
    assert_eq!(c.metric("crl_stale"), 0);

    // openssl ca signs a CRL revoking reception-1 that is due for its next update in 1 second.
    let reception_serial = serial(s(&c.path("terminal.pem"))).replace("serial=", "");
    write(
        &w.join("index.txt"),
        format!("R\t351231000000Z\t250101000000Z\t{reception_serial}\tunknown\t/CN=reception-1\n"),
    );
    write(&w.join("crlnumber"), "1000\n");
    write(
        &w.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\n",
            s(&w.join("index.txt")),
            s(&w.join("crlnumber"))
        ),
    );
    let stale = w.join("stale.pem");
    sh(&format!(
        "openssl ca -batch -config {} -gencrl -crlsec 1 -keyfile {} -cert {} -out {}",
        s(&w.join("ca.cnf")),
        s(&c.path("ca.key")),
        s(&c.path("ca.pem")),
        s(&stale)
    ))
    .ok();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::copy(&stale, c.path("crl.pem")).unwrap();
    // The gateway picks the new CRL up by itself; it is already past its next update.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.metric("crl_stale") != 1 {
        assert!(Instant::now() < deadline, "crl_stale never rose");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        curl_as(&c, s(&c.path("terminal.pem")), s(&c.path("terminal.key"))),
        0,
        "the revoked terminal stays refused under the stale CRL"
    );
    assert_eq!(
        curl_as(&c, &cert, &key),
        200,
        "every other terminal is still admitted"
    );
    assert!(c.audit_has("deny", "client certificate revoked"));
    let check = sh(&format!(
        "kakehashi gateway check --config {}",
        s(&c.path("gateway.toml"))
    ))
    .ok();
    assert!(check.contains("WARNING: the CRL's next update was"), "{check}");

    // A fresh CRL from the appliance's own CA clears the metric.
    sh(&format!(
        "kakehashi cert crl --dir {} --out {}",
        s(&c.path("")),
        s(&c.path("crl.pem"))
    ))
    .ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.metric("crl_stale") != 0 {
        assert!(Instant::now() < deadline, "crl_stale stayed up after a fresh CRL");
        std::thread::sleep(Duration::from_millis(100));
    }
}
