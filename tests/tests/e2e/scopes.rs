//! Scopes: what each terminal and person may call, enforced online, offline and at replay. The
//! truth about what changed is read from the cloud engine's own SQLite file.

use std::time::{Duration, Instant};

use super::gateway::{Clinic, exchange};
use crate::support::*;

/// Quick return after an outage, so the tests do not wait out the production default.
const FAST: &str = "\n[failover]\nhealthy_secs = 1\n";
const PASSWORD: &str = "a-long-enough-password";

/// Every call the rules know (and one they do not), with the scope it needs (`None`: nobody).
/// Bodies are what engine-sim takes, so a call that is allowed does what it says.
const CALLS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "GET",
        "/api01rv2/patientgetv2?id=1&format=json",
        "",
        Some("reference"),
    ),
    (
        "POST",
        "/api01rv2/patientlst2v2?class=01&format=json",
        r#"{"patientlst2req":{"Patient_ID_Information":[{"Patient_ID":"1"}]}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/api01rv2/acceptlstv2?class=01&format=json",
        r#"{"acceptlstreq":{}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/api01rv2/appointlstv2?class=01&format=json",
        r#"{"appointlstreq":{"Appointment_Date":"2030-01-01"}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/api01rv2/system01dailyv2?format=json",
        r#"{"system01_dailyreq":{}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/api/api01rv2/systeminfv2?format=json",
        "{}",
        Some("reference"),
    ),
    (
        "POST",
        "/orca11/acceptmodv2?format=json",
        r#"{"acceptreq":{"Request_Number":"00"}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/orca11/acceptmodv2?class=01&format=json",
        r#"{"acceptreq":{"Request_Number":"00","Patient_ID":"2"}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/orca11/acceptmodv2?class=01&format=json",
        r#"{"acceptreq":{"Patient_ID":"2","Department_Code":"01","Physician_Code":"10001"}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/orca11/acceptmodv2?class=01",
        r#"<data><acceptreq type="record"><Request_Number type="string">01</Request_Number><Patient_ID type="string">3</Patient_ID></acceptreq></data>"#,
        Some("write"),
    ),
    (
        "POST",
        "/orca11/acceptmodv2?class=02&format=json",
        r#"{"acceptreq":{"Patient_ID":"2","Acceptance_Id":"1"}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/orca14/appointmodv2?class=01&format=json",
        r#"{"appointreq":{"Patient_ID":"3","Appointment_Date":"2030-01-01","Appointment_Time":"10:30:00"}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/orca14/appointmodv2?class=02&format=json",
        r#"{"appointreq":{"Patient_ID":"3","Appointment_Date":"2030-01-01"}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/api21/medicalmodv2?class=01&format=json",
        r#"{"medicalreq":{"Patient_ID":"1","Perform_Date":"2030-01-01"}}"#,
        Some("write"),
    ),
    ("POST", "/api01rv2/okusuriputv2?format=json", "{}", Some("write")),
    (
        "POST",
        "/api21/medicalmodv31?format=json",
        r#"{"medicalv3req1":{}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/api01rv2/prescriptionv2?format=json",
        "{}",
        Some("write"),
    ),
    (
        "POST",
        "/orca101/manageusersv2?format=json",
        r#"{"manageusersreq":{"Request_Number":"01"}}"#,
        Some("reference"),
    ),
    (
        "POST",
        "/orca101/manageusersv2?format=json",
        r#"{"manageusersreq":{"Request_Number":"02"}}"#,
        Some("write"),
    ),
    (
        "POST",
        "/rpc/",
        r#"{"jsonrpc":"2.0","method":"ping","id":1}"#,
        Some("client"),
    ),
    ("POST", "/sim/upload", "x", None),
];

/// The rows of every table engine-sim changes, and its idempotency keys: equal before and after
/// means nothing was written.
fn cloud_state(c: &Clinic) -> String {
    let db = rusqlite::Connection::open(c.path("engine.db")).unwrap();
    ["visits", "medical", "idempotency"]
        .iter()
        .map(|t| {
            let n: i64 = db
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap();
            let cancelled: i64 = match *t {
                "visits" => db
                    .query_row("SELECT count(*) FROM visits WHERE cancelled = 1", [], |r| {
                        r.get(0)
                    })
                    .unwrap(),
                _ => 0,
            };
            format!("{t}={n}/{cancelled}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn add_user(c: &Clinic, id: &str, scopes: &str) {
    let pw = c.path("pw.txt");
    write(&pw, PASSWORD);
    sh(&format!(
        "kakehashi user add {id} --scopes {scopes} --password-file {} --data-dir {}",
        s(&pw),
        c.data()
    ))
    .ok();
}

/// A command line refused as a usage error (clap's exit 2), with `message`.
#[track_caller]
fn usage_error(line: &str, message: &str) {
    let run = sh(line);
    assert_eq!(run.code, 2, "{line}: {}", run.stderr);
    assert!(run.stderr.contains(message), "{line}: {}", run.stderr);
}

fn request(method: &str, path: &str, body: &str, user: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(user);
    let content_type = if body.starts_with('<') {
        "application/xml"
    } else {
        "application/json"
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Every call of [`CALLS`] as `user`, holding `scopes`: a 403 in the engine's shape exactly where
/// the scope is missing.
fn every_call(c: &Clinic, user: &str, scopes: &[&str]) {
    let mut conn = c.connect("terminal.pem", "terminal.key");
    for (method, path, body, needs) in CALLS {
        let (code, answer) = exchange(
            &mut conn,
            &request(method, path, body, &format!("{user}:{PASSWORD}")),
        );
        let allowed = needs.is_some_and(|n| scopes.contains(&n));
        if allowed {
            assert_ne!(code, 403, "{user} {method} {path} {body}: {answer}");
        } else {
            assert_eq!(code, 403, "{user} {method} {path} {body}: {answer}");
            let expected = match needs {
                Some(n) => format!("needs the {n} scope"),
                None => "do not know this call".to_owned(),
            };
            assert!(answer.contains(&expected), "{user} {path}: {answer}");
            if path.contains("format=json") {
                let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
                let record = v.as_object().and_then(|o| o.values().next()).unwrap();
                assert_eq!(record["Api_Result"], "93", "{answer}");
            }
        }
    }
}

#[test]
fn every_known_call_by_scope_online_and_offline_and_no_change_without_write() {
    let c = Clinic::start(FAST);
    add_user(&c, "display", "reference");
    add_user(&c, "desk-client", "client");
    add_user(&c, "appointments", "write");
    add_user(&c, "nobody", "none");

    let before = cloud_state(&c);
    for (user, scopes) in [
        ("display", &["reference"][..]),
        ("desk-client", &["client"]),
        ("nobody", &[]),
    ] {
        every_call(&c, user, scopes);
        assert_eq!(cloud_state(&c), before, "{user} changed the cloud's database");
    }
    // The test can fail: a person holding write does change it.
    every_call(&c, "appointments", &["reference", "write"]);
    assert_ne!(
        cloud_state(&c),
        before,
        "writes with the write scope reach the cloud"
    );
    assert!(c.metric("requests_denied_scope_write_total") > 0);
    assert!(c.metric("requests_denied_unknown_call_total") > 0);
    assert!(c.audit_has(
        "deny",
        "refused: the call needs scope write; terminal has client,reference,write, person has reference"
    ));
    let denied = c.audit();
    assert!(denied.iter().any(|e| e["decision"] == "deny"
        && e["user"] == "display"
        && e["terminal"] == "reception-1"
        && e["reason"].as_str().is_some_and(|r| r.contains("scope write"))));

    // Offline: the cloud stopped, the local engine answers; still nothing journaled for them.
    sh(&format!("kill -KILL {}", c.engine.pid())).ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.metric("hybrid_mode") != 1 {
        assert!(Instant::now() < deadline, "emergency not reached");
        std::thread::sleep(Duration::from_millis(50));
    }
    let journaled = c.metric("journal_appends_total");
    for (user, scopes) in [("display", &["reference"][..]), ("desk-client", &["client"])] {
        every_call(&c, user, scopes);
    }
    assert_eq!(
        c.metric("journal_appends_total"),
        journaled,
        "nothing journaled without write"
    );
    every_call(&c, "appointments", &["reference", "write"]);
    assert!(
        c.metric("journal_appends_total") > journaled,
        "a write scope journals"
    );
}

#[test]
fn paths_that_are_not_canonical_are_refused_before_any_rule() {
    let c = Clinic::start("");
    let mut conn = c.connect("terminal.pem", "terminal.key");
    let body = r#"{"acceptreq":{"Patient_ID":"1"}}"#;
    let before = cloud_state(&c);
    for path in [
        "/api01rv2/../orca11/acceptmodv2?class=01&format=json",
        "/api01rv2/%2e%2e/orca11/acceptmodv2?class=01&format=json",
        "/api01rv2/%2E%2e/orca11/acceptmodv2?class=01&format=json",
        "/api01rv2%2F..%2Forca11/acceptmodv2?class=01&format=json",
        "/api01rv2/.%2e/orca11/acceptmodv2?class=01&format=json",
        "//orca11/acceptmodv2?class=01&format=json",
        "/api01rv2//../orca11/acceptmodv2?class=01&format=json",
        "/api01rv2/%5c../orca11/acceptmodv2?class=01&format=json",
        "/api01rv2/./patientgetv2?id=1&format=json",
        "/kakehashi/../orca11/acceptmodv2?class=01&format=json",
    ] {
        let (code, answer) = exchange(&mut conn, &request("POST", path, body, &c.user));
        assert_eq!(code, 400, "{path}: {answer}");
        assert!(answer.contains("not canonical"), "{path}: {answer}");
    }
    // A backslash is not even a valid request target: curl sends it, the gateway refuses it.
    let (code, _) = c.curl(
        &format!(
            "{} -u {} --path-as-is -X POST -d {body} -H Content-Type:application/json",
            c.tls(),
            c.user
        ),
        "/api01rv2\\..\\orca11/acceptmodv2",
    );
    assert_eq!(code, 400);
    assert_eq!(cloud_state(&c), before);
    assert!(c.metric("requests_denied_noncanonical_total") >= 10);
}

#[test]
fn a_terminal_narrowed_by_a_reload_loses_write_on_its_open_connection() {
    let c = Clinic::start("");
    let mut conn = c.connect("terminal.pem", "terminal.key");
    let write = request(
        "POST",
        "/api21/medicalmodv2?class=01&format=json",
        r#"{"medicalreq":{"Patient_ID":"1","Perform_Date":"2030-02-02"}}"#,
        &c.user,
    );
    assert_eq!(exchange(&mut conn, &write).0, 200);
    let listed = sh(&format!("kakehashi terminal list --data-dir {}", c.data())).ok();
    assert!(listed.contains("client,reference,write"), "{listed}");
    sh(&format!(
        "kakehashi terminal set reception-1 --scopes reference --data-dir {}",
        c.data()
    ))
    .ok();
    c.hup();
    let (code, answer) = exchange(&mut conn, &write);
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("this terminal does not have it"), "{answer}");
    let read = request("GET", "/api01rv2/patientgetv2?id=1&format=json", "", &c.user);
    assert_eq!(exchange(&mut conn, &read).0, 200);
    // Bad input: a clear message, nothing changed.
    usage_error(
        &format!(
            "kakehashi terminal set reception-1 --scopes reference,admin --data-dir {}",
            c.data()
        ),
        "unknown scope \"admin\": expected client, reference or write",
    );
    sh(&format!(
        "kakehashi terminal set ghost --scopes write --data-dir {}",
        c.data()
    ))
    .fails_with(&["ghost"]);
    let listed = sh(&format!("kakehashi terminal list --json --data-dir {}", c.data())).ok();
    assert!(
        listed.contains(
            r#""scopes": [
      "reference"
    ]"#
        ) || listed.contains(r#""scopes":["reference"]"#),
        "{listed}"
    );
}

#[test]
fn a_journaled_write_whose_person_lost_write_is_quarantined_at_replay_not_sent() {
    let c = Clinic::start(FAST);
    add_user(&c, "nurse", "write");
    add_user(&c, "doctor", "write");
    sh(&format!("kill -STOP {}", c.engine.pid())).ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.metric("hybrid_mode") != 1 {
        assert!(Instant::now() < deadline, "emergency not reached");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut conn = c.connect("terminal.pem", "terminal.key");
    for (user, marker) in [("nurse", "n1"), ("doctor", "d1"), ("nurse", "n2")] {
        let body = format!(
            r#"{{"medicalreq":{{"Patient_ID":"1","Perform_Date":"2030-03-03","Marker":"{marker}"}}}}"#
        );
        let (code, answer) = exchange(
            &mut conn,
            &request(
                "POST",
                "/api21/medicalmodv2?class=01&format=json",
                &body,
                &format!("{user}:{PASSWORD}"),
            ),
        );
        assert_eq!(code, 200, "{answer}");
        assert!(answer.contains("W90"), "{answer}");
    }
    // While the cloud is away, the nurse keeps only reading.
    sh(&format!(
        "kakehashi user set nurse --scopes reference --data-dir {}",
        c.data()
    ))
    .ok();
    sh(&format!("kill -CONT {}", c.engine.pid())).ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.metric("journal_pending") != 0 {
        assert!(Instant::now() < deadline, "the journal was not handed back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let db = rusqlite::Connection::open(c.path("engine.db")).unwrap();
    let markers: Vec<String> = db
        .prepare("SELECT body FROM medical WHERE date = '2030-03-03'")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(&b.unwrap()).unwrap()["Marker"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(markers, ["d1"], "only the doctor's write reached the cloud");
    assert_eq!(c.metric("journal_no_longer_allowed_total"), 2);
    assert!(c.audit_has(
        "deny",
        "quarantined: no longer allowed: the write needs scope write; terminal has client,reference,write, person has reference"
    ));
    let listed = sh(&format!(
        "kakehashi journal list --state quarantined --data-dir {}",
        c.data()
    ))
    .ok();
    assert!(listed.contains("no longer allowed"), "{listed}");
}

#[test]
fn a_reference_person_added_from_the_command_line_reads_and_cannot_write_through_the_demo() {
    let c = Clinic::start("");
    let pw = c.path("display-pw.txt");
    write(&pw, PASSWORD);
    let out = sh(&format!(
        "kakehashi user add display --scopes reference --password-file {} --data-dir {}",
        s(&pw),
        c.data()
    ))
    .ok();
    assert!(out.contains("added user display (scopes reference)"), "{out}");
    let netrc = format!("-u display:{PASSWORD}");
    let (code, body) = c.curl(
        &format!("{} {netrc}", c.tls()),
        "/api01rv2/patientgetv2?id=1&format=json",
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.curl(
        &format!(
            "{} {netrc} -X POST -H Content-Type:application/json -d {{\"acceptreq\":{{\"Patient_ID\":\"1\"}}}}",
            c.tls()
        ),
        "/orca11/acceptmodv2?class=01&format=json",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"Api_Result\":\"93\""), "{body}");
    let users = sh(&format!("kakehashi user list --data-dir {}", c.data())).ok();
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("display") && l.contains("reference")),
        "{users}"
    );
    usage_error(
        &format!(
            "kakehashi user add x2 --scopes rw --password-file {} --data-dir {}",
            s(&pw),
            c.data()
        ),
        "invalid value 'rw' for '--scopes <LIST>': unknown scope \"rw\"",
    );
}
