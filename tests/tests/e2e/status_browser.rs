//! The status page in real headless Chromium, as a clinic PC sees it: the terminal's PKCS#12 in
//! an NSS database made with `pk12util` (`$HOME/.pki/nssdb` of a temporary HOME), the clinic CA
//! trusted there, and Chromium's `AutoSelectCertificateForUrls` policy presenting the
//! certificate without a dialog. Driven by WebDriver through `chromedriver`, spoken with curl.
//! Screenshots of each state go to `CARGO_TARGET_TMPDIR/status/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::gateway::Clinic;
use crate::support::*;

const POLICY_DIR: &str = "/etc/chromium/policies/managed";
const POLICY: &str = "/etc/chromium/policies/managed/kakehashi-status-tests.json";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, with its own HOME holding the NSS database; killed on drop.
struct Driver {
    child: Child,
    url: String,
    _home: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Driver {
    /// An NSS database with the terminal's PKCS#12 and the clinic CA; the policy that picks the
    /// certificate for the gateway; chromedriver on a free port.
    fn start(c: &Clinic) -> Driver {
        let home = tempfile::tempdir().unwrap();
        let nss = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&nss).unwrap();
        let db = format!("sql:{}", s(&nss));
        tool("certutil", &["-N", "-d", &db, "--empty-password"]).ok();
        let password = std::fs::read_to_string(c.path("terminal.p12.password")).unwrap();
        tool(
            "pk12util",
            &[
                "-i",
                s(&c.path("terminal.p12")),
                "-d",
                &db,
                "-W",
                password.trim(),
                "-K",
                "",
            ],
        )
        .ok();
        tool(
            "certutil",
            &[
                "-A",
                "-d",
                &db,
                "-n",
                "clinic-ca",
                "-t",
                "CT,,",
                "-i",
                s(&c.path("ca.pem")),
            ],
        )
        .ok();
        let pattern = json!({"pattern": c.gateway.url, "filter": {}}).to_string();
        std::fs::create_dir_all(POLICY_DIR).unwrap();
        write(
            Path::new(POLICY),
            json!({"AutoSelectCertificateForUrls": [pattern]}).to_string(),
        );
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver)");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while driver.call("GET", "/status", None)["value"]["ready"] != true {
            assert!(Instant::now() < deadline, "chromedriver not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let mut args = vec!["-s", "-X", method, "-H", "Content-Type: application/json"];
        let body = body.map(|b| b.to_string());
        if let Some(b) = &body {
            args.extend(["--data-binary", b]);
        }
        args.push(&url);
        let out = Command::new("curl").args(&args).output().expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// A headless Chromium; `javascript`: whether scripts run.
    fn browser(&self, javascript: bool) -> Browser<'_> {
        // A profile of its own: two browsers cannot share one.
        static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = self._home.path().join(format!("profile-{n}"));
        let mut options = json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=900,1000", "--lang=ja", format!("--user-data-dir={}", s(&profile))],
            // A Japanese clinic PC: Japanese first.
            "prefs": {"intl": {"accept_languages": "ja,en"}},
        });
        if !javascript {
            options["prefs"]["profile"] = json!({"managed_default_content_settings": {"javascript": 2}});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "acceptInsecureCerts": false, "goog:chromeOptions": options}}});
        let v = self.call("POST", "/session", Some(caps));
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser {
            driver: self,
            session,
        }
    }
}

impl Browser<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The text of the first element matching `css`, or `None`.
    fn text(&self, css: &str) -> Option<String> {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found["value"][ELEMENT].as_str()?;
        let text = self.call("GET", &format!("/element/{id}/text"), None);
        text["value"].as_str().map(str::to_owned)
    }

    /// Types into the first element matching `css`.
    fn type_into(&self, css: &str, keys: &str) {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found["value"][ELEMENT].as_str().expect("the element").to_owned();
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": keys })),
        );
    }

    fn click(&self, css: &str) {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found["value"][ELEMENT].as_str().expect("the element").to_owned();
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Waits until `css`'s text contains `want`; how long that took.
    fn until(&self, css: &str, want: &str, within: Duration, reload: bool) -> Duration {
        let start = Instant::now();
        loop {
            if self.text(css).is_some_and(|t| t.contains(want)) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{css} does not say {want:?} after {within:?}: {:?}",
                self.text(css)
            );
            if reload {
                self.call("POST", "/refresh", Some(json!({})));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page, under the test output directory.
    fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("a screenshot"))
            .expect("base64");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        self.call("DELETE", "", None);
    }
}

#[test]
fn chromium_shows_the_outage_the_waiting_count_and_the_operators_certificates() {
    let dir = Clinic::setup("127.0.0.1");
    super::status::server_certificate_ending_soon(&dir);
    let c = Clinic::adopt(
        dir,
        "\n[failover]\nhealthy_secs = 1\n\n[status]\noperators = [\"reception\"]\n",
    );
    let driver = Driver::start(&c);
    let page = format!("{}/kakehashi/status", c.gateway.url);
    let live = driver.browser(true);
    let plain = driver.browser(false);
    live.open(&page);
    plain.open(&page);
    live.until("#banner", "クラウド接続中", Duration::from_secs(10), false);
    plain.until("#banner", "クラウド接続中", Duration::from_secs(10), false);
    live.screenshot("normal");

    sh(&format!("kill -STOP {}", c.engine.pid())).ok();
    let with_js = live.until("#banner", "障害時モード", Duration::from_secs(5), false);
    eprintln!("chromium: emergency on the page {with_js:?} after the cloud stopped (JavaScript)");
    let reloaded = plain.until("#banner", "障害時モード", Duration::from_secs(5), true);
    eprintln!("chromium: emergency on reload without JavaScript after {reloaded:?} more");
    live.screenshot("emergency");

    let body = r#"{"medicalreq":{"Patient_ID":"1","Perform_Date":"2026-12-04","Marker":"browser"}}"#;
    let (code, answer) = c.curl(
        &format!(
            "{} -u {} -H Content-Type:application/json -d {body}",
            c.tls(),
            c.user
        ),
        "/api21/medicalmodv2?class=01&format=json",
    );
    assert_eq!(code, 200, "{answer}");
    live.until("#journal-pending", "1", Duration::from_secs(5), false);
    plain.until("#journal-pending", "1", Duration::from_secs(5), true);
    live.screenshot("emergency-waiting");

    // Staff who did not sign in see no operator's section; the operator, signed in, does.
    assert!(plain.text("#expiring").is_none(), "staff see no certificates");
    let (id, password) = c.user.split_once(':').unwrap();
    let operator = driver.browser(true);
    operator.open(&format!(
        "{}/kakehashi/login?next=/kakehashi/status",
        c.gateway.url
    ));
    operator.type_into("input[name=id]", id);
    operator.type_into("input[name=password]", password);
    operator.click("button[type=submit]");
    operator.until("#expiring", "server", Duration::from_secs(5), false);
    operator.screenshot("operator");

    // The cloud back, but its database held by another writer: it answers the probe and cannot
    // take the journaled write yet (5xx, retried), so the page says recovery with one waiting.
    let held = rusqlite::Connection::open(c.path("engine.db")).unwrap();
    held.execute_batch("BEGIN IMMEDIATE").unwrap();
    sh(&format!("kill -CONT {}", c.engine.pid())).ok();
    live.until("#banner", "復旧中：送信待ち 1 件", Duration::from_secs(15), false);
    plain.until("#banner", "復旧中：送信待ち 1 件", Duration::from_secs(5), true);
    live.screenshot("recovery");
    drop(held);
    live.until("#journal-pending", "0", Duration::from_secs(15), false);
    live.until("#banner", "クラウド接続中", Duration::from_secs(15), false);
    live.screenshot("normal-after");
    let _ = std::fs::remove_file(POLICY);
}
