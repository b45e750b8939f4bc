//! The status page: `/kakehashi/status` and `status.json` on the api listener, `/status.json` on
//! the admin listener and `kakehashi status`, against a real clinic whose cloud is stopped and
//! continued. Terminals are curl with the demo terminal's certificate.

use std::time::{Duration, Instant};

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

const FAST: &str = "\n[failover]\nhealthy_secs = 1\n\n[status]\noperators = [\"reception\"]\n";
const WRITE: &str = "/api21/medicalmodv2?class=01&format=json";

impl Clinic {
    /// The status JSON as the terminal sees it (`options`: extra curl options, e.g. a cookie).
    fn status_json(&self, options: &str) -> serde_json::Value {
        let (code, body) = self.curl(&format!("{} {options}", self.tls()), "/kakehashi/status.json");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Polls the status JSON until `field` is `want`; how long that took.
    fn status_until(&self, field: &str, want: serde_json::Value, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.status_json("");
            if v[field] == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{field} is not {want} after {within:?}: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Signs the demo's staff account in on the login page; the curl options that carry its
    /// session cookie.
    pub(crate) fn signed_in(&self) -> String {
        let jar = self.dir.path().join("cookies.txt");
        let (id, password) = self.user.split_once(':').expect("ID:password");
        let (code, body) = self.curl(
            &format!(
                "{} -c {} --data-urlencode id={id} --data-urlencode password={password} -d next=/kakehashi/status",
                self.tls(),
                s(&jar)
            ),
            "/kakehashi/login",
        );
        assert_eq!(code, 303, "{body}");
        format!("-b {}", s(&jar))
    }
}

/// Replaces the gateway's server certificate with one that ends in ten days.
pub(super) fn server_certificate_ending_soon(dir: &tempfile::TempDir) {
    let clinic = dir.path().join("clinic");
    kakehashi(&[
        "cert",
        "issue",
        "--dir",
        s(&clinic),
        "--profile",
        "server",
        "--name",
        "server",
        "--san",
        "dns:localhost",
        "--san",
        "ip:127.0.0.1",
        "--days",
        "10",
        "--replace",
        "--out",
        s(&clinic),
    ])
    .ok();
}

#[test]
fn the_status_page_follows_an_outage_and_its_journal_in_japanese_and_english() {
    let dir = Clinic::setup("127.0.0.1");
    server_certificate_ending_soon(&dir);
    let c = Clinic::adopt(dir, FAST);

    let v = c.status_json("");
    assert_eq!(v["mode"], "normal", "{v}");
    assert_eq!(v["journal_pending"], 0);
    assert!(
        v.get("operator").is_none(),
        "staff see no operator's sections: {v}"
    );

    let headers = sh(&format!(
        "curl -s -D - -o /dev/null {} {}/kakehashi/status",
        c.tls(),
        c.gateway.url
    ))
    .ok();
    let headers = headers.to_lowercase();
    assert!(
        headers.contains("content-security-policy: default-src 'self'"),
        "{headers}"
    );
    let (code, html) = c.curl(&c.tls(), "/kakehashi/status");
    assert_eq!(code, 200);
    assert!(html.contains("<html lang=\"ja\">"), "{html}");
    assert!(html.contains("クラウド接続中"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    assert!(html.len() < 50 * 1024, "{} bytes", html.len());
    let (_, english) = c.curl(
        &format!("{} -H Accept-Language:en-US,en", c.tls()),
        "/kakehashi/status",
    );
    assert!(english.contains("Connected to the cloud"), "{english}");
    let (_, english) = c.curl(&c.tls(), "/kakehashi/status?lang=en");
    assert!(english.contains("<html lang=\"en\">"), "{english}");

    // The cloud black-holed: the page says so within 5 s.
    sh(&format!("kill -STOP {}", c.engine.pid())).ok();
    let took = c.status_until("mode", "emergency".into(), Duration::from_secs(5));
    eprintln!("status page: emergency {took:?} after the cloud stopped");
    let (_, html) = c.curl(&c.tls(), "/kakehashi/status");
    assert!(html.contains("障害時モード：ローカルで受付中"), "{html}");

    // An offline write waits in the journal.
    let body = r#"{"medicalreq":{"Patient_ID":"1","Perform_Date":"2026-12-04","Marker":"status"}}"#;
    let (code, answer) = c.curl(
        &format!(
            "{} -u {} -H Content-Type:application/json -d {body}",
            c.tls(),
            c.user
        ),
        WRITE,
    );
    assert_eq!(code, 200, "{answer}");
    let v = c.status_json("");
    assert_eq!(v["journal_pending"], 1, "{v}");
    assert!(v["journal_oldest"].is_string(), "{v}");
    assert!(v["outages"][0]["ended"].is_null(), "an outage in progress: {v}");

    // A refused sign-in, for the operator's list of refusals.
    let (code, _) = c.curl(&format!("{} -u nobody:wrong-password", c.tls()), PATIENT);
    assert_eq!(code, 401);

    // An enrollment token not yet used, for the operator's list of what ends soon.
    let config = c.path("gateway.toml");
    kakehashi(&[
        "terminal",
        "add",
        "tablet-2",
        "--enroll",
        "--token-hours",
        "48",
        "--config",
        s(&config),
    ])
    .ok();

    // The operator, signed in, sees the certificate and the token that end soon, the refusal and
    // when the terminal was last seen; the CLI too.
    let cookie = c.signed_in();
    let v = c.status_json(&cookie);
    let expiring = &v["operator"]["expiring"];
    assert_eq!(expiring[0]["what"], "server", "{v}");
    assert!(expiring[0]["days_left"].as_i64().is_some_and(|d| d <= 10), "{v}");
    assert_eq!(expiring[1]["what"], "enrollment token", "{v}");
    assert_eq!(expiring[1]["subject"], "tablet-2", "{v}");
    assert!(
        expiring[1]["days_left"]
            .as_i64()
            .is_some_and(|d| (1..=2).contains(&d)),
        "{v}"
    );
    let refusals = v["operator"]["recent_refusals"].as_array().expect("refusals");
    assert!(
        refusals
            .iter()
            .any(|r| r["user"] == "nobody" && r["terminal"] == "reception-1"),
        "{v}"
    );
    assert!(v["operator"]["terminals"][0]["last_seen"].is_string(), "{v}");
    let (_, html) = c.curl(&format!("{} {cookie}", c.tls()), "/kakehashi/status");
    assert!(html.contains("id=\"expiring\""), "{html}");
    let (_, html) = c.curl(&c.tls(), "/kakehashi/status");
    assert!(
        !html.contains("id=\"expiring\""),
        "not for staff who did not sign in"
    );
    assert!(c.audit_has("allow", "status page with the operator's sections"));
    let text = kakehashi(&["status", "--config", s(&config)]).ok();
    assert!(text.contains("mode:          emergency"), "{text}");
    assert!(text.contains("expiring:      server"), "{text}");
    assert!(text.contains("refused:") && text.contains("nobody"), "{text}");

    // The cloud back: the journal handed back, the count falls to 0.
    sh(&format!("kill -CONT {}", c.engine.pid())).ok();
    c.status_until("journal_pending", 0.into(), Duration::from_secs(15));
    c.status_until("mode", "normal".into(), Duration::from_secs(15));
    let json = kakehashi(&["status", "--config", s(&config), "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["mode"], "normal");
    assert_eq!(v["journal_pending"], 0);
    assert!(v["outages"][0]["ended"].is_string(), "the outage is over: {v}");
    assert!(v["last_contact"].is_string(), "{v}");
}
