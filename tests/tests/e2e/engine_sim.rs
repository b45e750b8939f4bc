//! `kakehashi engine-sim`: the reference engine, called by curl as a terminal would call the cloud.

use std::path::Path;

use crate::support::*;

const AUTH: &str = "ormaster:ormaster";

/// An engine on a random loopback port with a fresh database.
struct Engine {
    dir: tempfile::TempDir,
    server: Server,
}

impl Engine {
    fn start(extra: &[&str]) -> Engine {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Engine::spawn(dir.path(), "127.0.0.1:0", extra);
        Engine { dir, server }
    }

    fn spawn(dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let db = dir.join("engine.db");
        let mut args = vec!["engine-sim", "--listen", listen, "--db", s(&db), "--seed", "demo"];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// curl against the engine: `curl -s OPTIONS URL/PATH`; the status and the body.
    fn curl(&self, options: &str, path: &str) -> (u16, String) {
        let out = sh(&format!(
            "curl -s -w ~STATUS~%{{http_code}} {options} {}{path}",
            self.server.url
        ))
        .ok();
        let (body, code) = out.rsplit_once("~STATUS~").expect("status");
        (code.trim().parse().expect("status"), body.to_owned())
    }

    fn post_json(&self, path: &str, body: &str, key: Option<&str>) -> serde_json::Value {
        let file = self.dir.path().join("body.json");
        write(&file, body);
        let key = key.map(|k| format!("-H Idempotency-Key:{k}")).unwrap_or_default();
        let (code, text) = self.curl(
            &format!(
                "-u {AUTH} -H Content-Type:application/json {key} --data-binary @{}",
                s(&file)
            ),
            path,
        );
        assert_eq!(code, 200, "{text}");
        serde_json::from_str(&text).expect("JSON answer")
    }
}

#[test]
fn patients_in_json_and_xml_with_and_without_the_api_prefix() {
    let e = Engine::start(&[]);
    let (code, json) = e.curl(&format!("-u {AUTH}"), "/api01rv2/patientgetv2?id=1&format=json");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["patientinfores"]["Api_Result"], "00");
    assert_eq!(
        v["patientinfores"]["Patient_Information"]["WholeName"],
        "日医 太郎"
    );

    let (code, xml) = e.curl(&format!("-u {AUTH}"), "/api/api01rv2/patientgetv2?id=1");
    assert_eq!(code, 200);
    assert!(
        xml.starts_with("<?xml") && xml.contains("<xmlio2><patientinfores type=\"record\">"),
        "{xml}"
    );
    assert!(
        xml.contains("<WholeName type=\"string\">日医 太郎</WholeName>"),
        "{xml}"
    );

    let (_, missing) = e.curl(&format!("-u {AUTH}"), "/api01rv2/patientgetv2?id=999&format=json");
    let v: serde_json::Value = serde_json::from_str(&missing).unwrap();
    assert_eq!(
        v["patientinfores"]["Api_Result"], "10",
        "a business error is 200 with a non-zero Api_Result"
    );

    let headers = sh(&format!(
        "curl -s -D - -o /dev/null -u {AUTH} {}/api01rv2/patientgetv2?id=1",
        e.server.url
    ))
    .ok();
    assert!(
        headers.to_ascii_lowercase().contains("x-hybridmode: normal"),
        "{headers}"
    );
}

#[test]
fn every_call_needs_basic_auth_and_a_post_needs_a_content_type() {
    let e = Engine::start(&[]);
    let headers = sh(&format!(
        "curl -s -D - -o /dev/null {}/api01rv2/patientgetv2?id=1",
        e.server.url
    ))
    .ok();
    assert!(headers.starts_with("HTTP/1.1 401"), "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm="),
        "{headers}"
    );
    assert_eq!(e.curl("-u ormaster:wrong", "/api01rv2/patientgetv2?id=1").0, 401);
    assert_eq!(
        e.curl(
            &format!("-u {AUTH} -X POST -H Content-Type:"),
            "/api01rv2/systeminfv2"
        )
        .0,
        400
    );
    assert_eq!(
        e.curl(
            &format!("-u {AUTH} -X POST -H Content-Type:application/json"),
            "/nowhere/api"
        )
        .0,
        404
    );
    let (code, why) = e.curl(
        &format!("-u {AUTH} -H Content-Type:application/xml -d <data><x>"),
        "/api01rv2/acceptlstv2",
    );
    assert_eq!(code, 400);
    assert!(why.contains("XML"), "{why}");
}

#[test]
fn receptions_register_list_cancel_and_honour_idempotency_keys() {
    let e = Engine::start(&[]);
    let body = r#"{"acceptreq":{"Patient_ID":"2","Department_Code":"01","Physician_Code":"10001"}}"#;
    let first = e.post_json("/orca11/acceptmodv2?class=01&format=json", body, Some("visit-1"));
    assert_eq!(first["acceptres"]["Api_Result"], "00");
    let again = e.post_json("/orca11/acceptmodv2?class=01&format=json", body, Some("visit-1"));
    assert_eq!(first, again, "the same key returns the first answer");
    let list = e.post_json(
        "/api01rv2/acceptlstv2?class=01&format=json",
        r#"{"acceptlstreq":{}}"#,
        None,
    );
    let items = list["acceptlstres"]["Acceptlst_Information"]
        .as_array()
        .expect("a list");
    assert_eq!(items.len(), 1, "stored once: {list}");

    // A key reused for another call is refused.
    let file = e.dir.path().join("m.json");
    write(&file, r#"{"medicalreq":{"Patient_ID":"2"}}"#);
    let reuse = format!(
        "-u {AUTH} -H Content-Type:application/json -H Idempotency-Key:visit-1 --data-binary @{}",
        s(&file)
    );
    assert_eq!(e.curl(&reuse, "/api21/medicalmodv2?class=01&format=json").0, 422);

    let id = first["acceptres"]["Acceptance_Id"].as_str().unwrap();
    let cancel = format!(r#"{{"acceptreq":{{"Patient_ID":"2","Acceptance_Id":"{id}"}}}}"#);
    let done = e.post_json("/orca11/acceptmodv2?class=02&format=json", &cancel, None);
    assert_eq!(done["acceptres"]["Api_Result"], "00");
    let list = e.post_json(
        "/api01rv2/acceptlstv2?class=01&format=json",
        r#"{"acceptlstreq":{}}"#,
        None,
    );
    assert_eq!(
        list["acceptlstres"]["Api_Result"], "21",
        "no receptions left: {list}"
    );
    let twice = e.post_json("/orca11/acceptmodv2?class=02&format=json", &cancel, None);
    assert_ne!(twice["acceptres"]["Api_Result"], "00");
}

#[test]
fn an_acknowledged_write_survives_sigkill() {
    let mut e = Engine::start(&[]);
    let body =
        r#"{"appointreq":{"Patient_ID":"3","Appointment_Date":"2026-12-01","Appointment_Time":"10:30:00"}}"#;
    let made = e.post_json("/orca14/appointmodv2?class=01&format=json", body, Some("a-1"));
    assert_eq!(made["appointres"]["Api_Result"], "00");
    let listen = e.server.url.trim_start_matches("http://").to_owned();
    e.server.kill();
    e.server = Engine::spawn(e.dir.path(), &listen, &[]);
    let list = e.post_json(
        "/api01rv2/appointlstv2?class=01&format=json",
        r#"{"appointlstreq":{"Appointment_Date":"2026-12-01"}}"#,
        None,
    );
    assert_eq!(
        list["appointlstres"]["Appointlst_Information"][0]["Appointment_Time"], "10:30:00",
        "{list}"
    );
    let again = e.post_json("/orca14/appointmodv2?class=01&format=json", body, Some("a-1"));
    assert_eq!(made, again, "the key is remembered across the restart");
}

#[test]
fn https_with_client_certificates_as_the_cloud_requires() {
    let tmp = tempfile::tempdir().unwrap();
    let d = s(tmp.path());
    sh(&format!(
        "kakehashi cert init-ca --dir {d}/ca --name Cloud --no-passphrase"
    ))
    .ok();
    let issue = |profile: &str, name: &str, san: &str| {
        sh(&format!(
            "kakehashi cert issue --dir {d}/ca --profile {profile} --name {name} {san} --out {d}"
        ))
        .ok();
    };
    issue("server", "engine", "--san ip:127.0.0.1");
    issue("uplink", "gateway", "");
    let engine = Server::start(&[
        "engine-sim",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &format!("{d}/e.db"),
        "--seed",
        "demo",
        "--tls-cert",
        &format!("{d}/engine.pem"),
        "--tls-key",
        &format!("{d}/engine.key"),
        "--client-ca",
        &format!("{d}/ca/ca.pem"),
    ]);
    assert!(engine.url.starts_with("https://"), "{}", engine.url);
    let url = format!("{}/api01rv2/patientgetv2?id=1&format=json", engine.url);
    let ok = sh(&format!(
        "curl -s --cacert {d}/ca/ca.pem --cert {d}/gateway.pem --key {d}/gateway.key -u {AUTH} {url}"
    ))
    .ok();
    assert!(ok.contains("\"Api_Result\":\"00\""), "{ok}");
    let refused = sh(&format!("curl -s --cacert {d}/ca/ca.pem -u {AUTH} {url}"));
    assert_ne!(refused.code, 0, "no client certificate, no connection");
}

#[test]
fn push_websocket_delivers_the_event_of_a_reception_made_by_another_terminal() {
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;
    let e = Engine::start(&[]);
    let addr = e.server.url.trim_start_matches("http://").to_owned();
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("request");
    // base64("ormaster:ormaster")
    request
        .headers_mut()
        .insert("Authorization", "Basic b3JtYXN0ZXI6b3JtYXN0ZXI=".parse().unwrap());
    let stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(request, stream).expect("WebSocket handshake");
    ws.send(Message::text(
        r#"{"command":"subscribe","req.id":"r1","event":"*"}"#,
    ))
    .unwrap();
    let reply: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply["command"], "subscribed");
    assert_eq!(reply["req.id"], "r1");

    e.post_json(
        "/orca11/acceptmodv2?class=01&format=json",
        r#"{"acceptreq":{"Patient_ID":"4"}}"#,
        None,
    );
    let event: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(event["command"], "event", "{event}");
    assert_eq!(event["sub.id"], reply["sub.id"]);
    assert_eq!(event["data"]["event"], "accept");
    assert_eq!(
        event["data"]["body"]["Patient_Information"]["Patient_ID"], "4",
        "{event}"
    );

    // Without credentials there is no WebSocket.
    let anonymous = format!("ws://{addr}/ws").into_client_request().unwrap();
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        tungstenite::client(anonymous, stream).is_err(),
        "401 before the upgrade"
    );
}

#[test]
fn engine_toml_configures_it_and_a_bad_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("engine.toml");
    write(
        &config,
        "listen = \"127.0.0.1:0\"\ndb = \"engine.db\"\nseed = \"demo\"\n[[users]]\nid = \"clinic\"\npassword = \"s3cret-pass\"\n",
    );
    let engine = Server::start(&["engine-sim", "--config", s(&config)]);
    assert!(
        tmp.path().join("engine.db").exists(),
        "db is relative to the config file"
    );
    let ok = sh(&format!(
        "curl -s -u clinic:s3cret-pass {}/api01rv2/patientgetv2?id=5&format=json",
        engine.url
    ))
    .ok();
    assert!(ok.contains("\"Api_Result\":\"00\""), "{ok}");

    write(
        &config,
        "db = \"engine.db\"\nport = 8000\n[[users]]\nid = \"a\"\npassword = \"b\"\n",
    );
    sh(&format!("kakehashi engine-sim --config {}", s(&config)))
        .fails_with(&["engine.toml", "unknown field `port`"]);
    write(&config, "db = \"engine.db\"\nusers = []\n");
    sh(&format!("kakehashi engine-sim --config {}", s(&config))).fails_with(&["engine.toml", "users"]);
    let both = sh(&format!("kakehashi engine-sim --config {} --db x.db", s(&config)));
    assert_eq!(both.code, 2, "--config and the options it replaces do not mix");
}
