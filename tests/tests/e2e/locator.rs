//! Finding the appliance: every command family (`terminal`, `user`, `audit`, `journal`,
//! `gateway`) takes `--config FILE` and works on that configuration's `data_dir`, and
//! `--data-dir DIR` overrides it. Each scenario uses a demo clinic (`demo --setup-only`, every
//! port chosen here) whose `gateway.toml` says `data_dir = "data"`, and a second, empty data
//! directory that only `--data-dir` names.

use std::path::{Path, PathBuf};

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

/// The demo's configuration, its data directory, and another directory beside them.
struct Demo {
    config: PathBuf,
    data: PathBuf,
    other: PathBuf,
}

impl Demo {
    fn at(clinic: &Path) -> Demo {
        Demo {
            config: clinic.join("gateway.toml"),
            data: clinic.join("data"),
            other: clinic.join("other-data"),
        }
    }

    fn config(&self) -> &str {
        s(&self.config)
    }

    fn other(&self) -> &str {
        s(&self.other)
    }
}

/// A `--json` listing: the values of `key` in its objects.
fn names(json: &str, key: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {json}"))
        .iter()
        .map(|t| t[key].as_str().expect("a string").to_owned())
        .collect()
}

/// The case: `terminal add X --enroll --config DEMO/gateway.toml` writes the token
/// where the demo's gateway looks, and a standard EST client enrolls with it.
#[test]
fn terminal_add_enroll_with_the_demos_config_is_enrolled_by_the_demos_gateway() {
    let c = Clinic::start("");
    let d = Demo::at(&c.path(""));
    let out = sh(&format!(
        "kakehashi terminal add tablet-9 --enroll --json --config {}",
        d.config()
    ))
    .ok();
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let token = v["token"].as_str().expect("a token");

    let dir = c.dir.path();
    let body = super::est::csr(dir, "tablet-9", "tablet-9");
    let est = std::fs::read_to_string(c.path("est.url")).unwrap();
    let answer = sh(&format!(
        "curl -s -w ~STATUS~%{{http_code}} --cacert {} -H Content-Type:application/pkcs10 --data-binary @{body} -u tablet-9:{token} {}/simpleenroll",
        s(&c.path("ca.pem")),
        est.trim()
    ))
    .stdout;
    let (answer, status) = answer.rsplit_once("~STATUS~").expect("status");
    assert_eq!(status, "200", "EST refused the token: {answer}");
    let pem = super::est::print_certs(dir, answer, "tablet-9");
    let subject = sh(&format!("openssl x509 -in {pem} -noout -subject")).ok();
    assert!(subject.contains("CN = tablet-9"), "{subject}");
    let (status, body) = c.curl(
        &format!(
            "--cacert {} --cert {pem} --key {} -u {}",
            s(&c.path("ca.pem")),
            s(&dir.join("tablet-9.key")),
            c.user
        ),
        PATIENT,
    );
    assert_eq!(status, 200, "{body}");

    // Registered in the demo's data directory, found by the configuration (an option before
    // or after the subcommand, or the environment) ...
    for args in [
        vec!["terminal", "list", "--json", "--config", d.config()],
        vec!["terminal", "--config", d.config(), "list", "--json"],
    ] {
        assert!(names(&kakehashi(&args).ok(), "name").contains(&"tablet-9".to_owned()));
    }
    let listed = kakehashi_env(
        &["terminal", "list", "--json"],
        &[("KAKEHASHI_CONFIG", d.config())],
    )
    .ok();
    assert!(
        names(&listed, "name").contains(&"tablet-9".to_owned()),
        "{listed}"
    );
    // ... or not, when --data-dir names another directory.
    let listed = kakehashi(&[
        "terminal",
        "list",
        "--json",
        "--config",
        d.config(),
        "--data-dir",
        d.other(),
    ])
    .ok();
    assert!(names(&listed, "name").is_empty(), "{listed}");
    let listed = kakehashi_env(
        &["terminal", "list", "--json", "--config", d.config()],
        &[("KAKEHASHI_DATA_DIR", d.other())],
    )
    .ok();
    assert!(names(&listed, "name").is_empty(), "{listed}");

    // `revoke` uses the same --config for the CA and the CRL, and refuses a --data-dir that
    // is not the one of that gateway: nothing changes.
    let before = snapshot(&d.data);
    kakehashi(&[
        "terminal",
        "revoke",
        "tablet-9",
        "--config",
        d.config(),
        "--data-dir",
        d.other(),
    ])
    .fails_with(&[
        &format!("--data-dir (or KAKEHASHI_DATA_DIR) is {}", d.other()),
        &format!("says data_dir = {}", s(&d.data)),
        "leave --data-dir out",
    ]);
    assert_unchanged(&before, &snapshot(&d.data));
    kakehashi(&["terminal", "revoke", "tablet-9", "--config", d.config()]).ok();
    let listed = kakehashi(&["terminal", "list", "--json", "--data-dir", s(&d.data)]).ok();
    assert!(listed.contains("tablet-9"), "{listed}");
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let tablet = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tablet-9")
        .unwrap();
    assert_eq!(tablet["enabled"], false, "{listed}");
}

/// `user` finds the data directory by the configuration, parsing it only: a file it names that
/// the CLI cannot read does not matter to `user list` (it does to `gateway check`), a
/// configuration that does not parse is reported with its file and key, and without either
/// option the error says how to name the appliance.
#[test]
fn user_commands_find_the_data_directory_by_the_configuration_and_only_parse_it() {
    let tmp = Clinic::setup("127.0.0.1");
    let clinic = tmp.path().join("clinic");
    let d = Demo::at(&clinic);
    kakehashi_env(
        &["user", "add", "nurse-1", "--config", d.config()],
        &[("KAKEHASHI_USER_PASSWORD", "a-long-nurse-password")],
    )
    .ok();
    let listed = kakehashi(&["user", "list", "--json", "--config", d.config()]).ok();
    assert_eq!(names(&listed, "id"), ["nurse-1", "reception"], "{listed}");
    let listed = kakehashi(&[
        "user",
        "--data-dir",
        d.other(),
        "list",
        "--json",
        "--config",
        d.config(),
    ])
    .ok();
    assert!(names(&listed, "id").is_empty(), "{listed}");
    let listed = kakehashi(&["user", "list", "--json", "--data-dir", s(&d.data)]).ok();
    assert_eq!(names(&listed, "id"), ["nurse-1", "reception"], "{listed}");

    let text = std::fs::read_to_string(&d.config).unwrap();
    let unreadable = clinic.join("unreadable-key.toml");
    write(
        &unreadable,
        text.replace("key = \"server.key\"", "key = \"missing.key\""),
    );
    let listed = kakehashi(&["user", "list", "--json", "--config", s(&unreadable)]).ok();
    assert_eq!(names(&listed, "id"), ["nurse-1", "reception"], "{listed}");
    kakehashi(&["gateway", "check", "--config", s(&unreadable)]).fails_with(&["tls.key", "missing.key"]);

    let typo = clinic.join("typo.toml");
    write(
        &typo,
        text.replace("data_dir = ", "colour = \"blue\"\ndata_dir = "),
    );
    kakehashi(&["user", "list", "--config", s(&typo)]).fails_with(&[s(&typo), "colour"]);

    let none = clinic.join("none.toml");
    kakehashi(&["user", "list", "--config", s(&none)]).fails_with(&[
        &format!("no configuration at {}, and no --data-dir", s(&none)),
        "--config FILE (or KAKEHASHI_CONFIG)",
        "--data-dir DIR (or KAKEHASHI_DATA_DIR)",
    ]);
    // The firmware commands need the configuration itself: a data directory does not do.
    kakehashi(&[
        "firmware",
        "status",
        "--config",
        s(&none),
        "--data-dir",
        s(&clinic),
    ])
    .fails_with(&[
        &format!("no configuration at {}: this command needs", s(&none)),
        "its [firmware] section",
    ]);
    if !Path::new("/etc/kakehashi/gateway.toml").exists() {
        kakehashi(&["user", "list"]).fails_with(&[
            "no configuration at /etc/kakehashi/gateway.toml (the default of --config)",
            "--data-dir DIR",
        ]);
    }
}

/// `audit` reads the log of the configuration's data directory, which the running demo gateway
/// writes; `--data-dir` reads another.
#[test]
fn audit_commands_read_the_log_the_configurations_gateway_writes() {
    let c = Clinic::start("");
    let d = Demo::at(&c.path(""));
    let (status, body) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let exported = kakehashi(&["audit", "export", "--config", d.config()]).ok();
        if exported.contains("terminal=reception-1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no entry for the request: {exported}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let verified = kakehashi(&["audit", "verify", "--config", d.config()]).ok();
    assert!(
        verified.contains("audit log intact") && !verified.contains(" 0 entries"),
        "{verified}"
    );

    std::fs::create_dir_all(&d.other).unwrap();
    let exported = kakehashi(&["audit", "export", "--config", d.config(), "--data-dir", d.other()]).ok();
    assert_eq!(exported, "");
    let verified = kakehashi(&["audit", "--data-dir", d.other(), "verify", "--config", d.config()]).ok();
    assert!(verified.contains("audit log intact: 0 entries"), "{verified}");
}

/// `journal` finds `journal.db` in the configuration's data directory; `--data-dir` looks in
/// another, and the error names the file it looked for.
#[test]
fn journal_commands_find_the_journal_of_the_configurations_data_directory() {
    let tmp = Clinic::setup("127.0.0.1");
    let d = Demo::at(&tmp.path().join("clinic"));
    use super::journal_cli::{RECEPTION, RECEPTION_BODY, fill, write_entry};
    let ids = fill(
        &d.data,
        vec![(
            write_entry(
                RECEPTION,
                RECEPTION_BODY.as_bytes(),
                "visit-9",
                Some("reception-1"),
                None,
            ),
            None,
        )],
    );
    let listed = kakehashi(&["journal", "list", "--json", "--config", d.config()]).ok();
    assert!(
        listed.contains(&format!("\"id\":{}", ids[0])) && listed.contains("visit-9"),
        "{listed}"
    );
    let shown = kakehashi(&["journal", "show", &ids[0].to_string(), "--config", d.config()]).ok();
    assert!(shown.contains("Patient_ID"), "{shown}");

    let before = snapshot(&d.data);
    kakehashi(&[
        "journal",
        "discard",
        &ids[0].to_string(),
        "--config",
        d.config(),
        "--data-dir",
        d.other(),
    ])
    .fails_with(&[
        &format!("{}: no such file", s(&d.other.join("journal.db"))),
        "are --config and --data-dir right?",
    ]);
    assert_unchanged(&before, &snapshot(&d.data));
}

/// `gateway run|check|init|import-bundle` take the same two options. `init` and `import-bundle`
/// only need the data directory; `run` and `check` use the whole configuration, so they refuse
/// a `--data-dir` that is not its `data_dir` (the daemon works where its configuration says, so
/// that every command given only `--config` finds its state).
#[test]
fn gateway_commands_take_the_same_options() {
    let tmp = Clinic::setup("127.0.0.1");
    let clinic = tmp.path().join("clinic");
    let d = Demo::at(&clinic);
    kakehashi(&["gateway", "check", "--config", d.config()]).ok();
    let same = clinic.join(".").join("data");
    kakehashi(&["gateway", "check", "--config", d.config(), "--data-dir", s(&same)]).ok();
    let disagree = [
        format!("--data-dir (or KAKEHASHI_DATA_DIR) is {}", d.other()),
        format!("{} says data_dir = {}", d.config(), s(&d.data)),
    ];
    let disagree = [disagree[0].as_str(), disagree[1].as_str()];
    kakehashi(&[
        "gateway",
        "check",
        "--config",
        d.config(),
        "--data-dir",
        d.other(),
    ])
    .fails_with(&disagree);
    let run = tool(
        "timeout",
        &[
            "30",
            s(&bin()),
            "gateway",
            "run",
            "--config",
            d.config(),
            "--data-dir",
            d.other(),
        ],
    );
    run.fails_with(&disagree);
    kakehashi(&["gateway", "run", "--config", s(&clinic.join("none.toml"))]).fails_with(&[
        "none.toml",
        "this command needs the gateway's configuration (gateway run)",
        "--config FILE",
    ]);

    // init: the configuration's data directory is the demo's, which holds keys already ...
    kakehashi(&["gateway", "init", "--config", d.config()])
        .fails_with(&[&format!("{} holds keys but no request.json", s(&d.data))]);
    // ... --data-dir names a new one.
    let out = kakehashi(&["gateway", "init", "--config", d.config(), "--data-dir", d.other()]).ok();
    assert!(
        out.contains(&format!("Initialized the appliance in {}", d.other())),
        "{out}"
    );
    assert!(d.other.join("request.json").exists());

    // import-bundle: the same. (A whole import through --config: see appliance.rs.)
    let junk = tmp.path().join("junk.bundle");
    write(&junk, "not a bundle");
    kakehashi(&["gateway", "import-bundle", s(&junk), "--config", d.config()])
        .fails_with(&[&format!("{} is not an initialized appliance", s(&d.data))]);
    let refused = kakehashi(&[
        "gateway",
        "import-bundle",
        s(&junk),
        "--config",
        d.config(),
        "--data-dir",
        d.other(),
    ])
    .fails_with(&[]);
    assert!(
        !refused.stderr.contains("not an initialized appliance"),
        "{}",
        refused.stderr
    );
}
