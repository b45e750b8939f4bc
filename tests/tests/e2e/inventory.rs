//! `kakehashi terminal` and `kakehashi user`: the appliance's inventory, changed as a vendor
//! would change it, every refusal naming why and changing nothing.

use std::path::PathBuf;

use crate::support::*;

const PASSWORD: &str = "sakura-reception-2025";
const UPSTREAM_SECRET: &str = "engine-secret-do-not-print";

/// A data directory (not yet created) inside a temporary directory.
struct Appliance {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Appliance {
    fn new() -> Appliance {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state");
        Appliance { tmp, dir }
    }

    /// `kakehashi LINE --data-dir DIR`.
    fn k(&self, line: &str) -> Run {
        sh(&format!("kakehashi {line} --data-dir {}", s(&self.dir)))
    }

    /// A file in the temporary directory (outside the data directory) holding `text`.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.tmp.path().join(name);
        write(&path, text);
        s(&path).to_owned()
    }

    fn json(&self, what: &str) -> Vec<serde_json::Value> {
        let out = self.k(&format!("{what} list --json")).ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what} list --json: {e}\n{out}"))
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.dir)
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.join("gateway.db")).expect("open gateway.db")
    }
}

type Snapshot = std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)>;

#[test]
fn terminals_are_added_listed_disabled_enabled_and_removed() {
    let a = Appliance::new();
    let out = a.k("terminal add reception-1 --note front-desk").ok();
    assert!(
        out.contains("registered terminal reception-1 (enabled, scopes client,reference,write)"),
        "{out}"
    );
    assert!(
        out.contains("SIGHUP") && out.contains("systemctl reload kakehashi"),
        "{out}"
    );
    assert_eq!(mode(&a.dir), 0o700);
    assert_eq!(mode(&a.dir.join("gateway.db")), 0o600);
    // A copy restored with a loose mode gets its group and other access taken away.
    std::fs::set_permissions(
        a.dir.join("gateway.db"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    a.k("terminal add dr.sato@sakura").ok();
    assert_eq!(mode(&a.dir.join("gateway.db")), 0o600);

    let table = a.k("terminal list").ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("dr.sato@sakura") && lines[1].contains("enabled"),
        "{table}"
    );
    assert!(
        lines[2].contains("reception-1") && lines[2].contains("front-desk"),
        "{table}"
    );

    let out = a.k("terminal disable reception-1").ok();
    assert!(
        out.contains("disabled terminal reception-1") && out.contains("SIGHUP"),
        "{out}"
    );
    let list = a.json("terminal");
    assert_eq!(list.len(), 2);
    let reception = list.iter().find(|t| t["name"] == "reception-1").expect("listed");
    assert_eq!(reception["enabled"], false);
    assert_eq!(reception["note"], "front-desk");
    assert!(reception["added"].as_str().expect("added").ends_with('Z'));

    a.k("terminal enable reception-1").ok();
    assert_eq!(a.json("terminal")[1]["enabled"], true);
    let out = a.k("terminal remove reception-1").ok();
    assert!(
        out.contains("removed terminal reception-1") && out.contains("cert revoke"),
        "{out}"
    );
    assert_eq!(a.json("terminal").len(), 1);
}

#[test]
fn terminal_refusals_name_the_problem_and_change_nothing() {
    let a = Appliance::new();
    a.k("terminal add reception-1").ok();
    a.k("terminal add laptop-2").ok();
    a.k("terminal disable laptop-2").ok();
    let before = a.snapshot();
    a.k("terminal add reception-1")
        .fails_with(&["terminal \"reception-1\" is already registered (added 20"]);
    a.k("terminal enable reception-1")
        .fails_with(&["\"reception-1\" is already enabled; nothing changed"]);
    a.k("terminal disable laptop-2")
        .fails_with(&["\"laptop-2\" is already disabled; nothing changed"]);
    for cmd in ["disable", "enable", "remove"] {
        a.k(&format!("terminal {cmd} ghost"))
            .fails_with(&["terminal \"ghost\" is not registered"]);
    }
    a.k("terminal add .hidden")
        .fails_with(&["\".hidden\": not a usable name"]);
    a.k("terminal add has/slash").fails_with(&["not a usable name"]);
    let long = "x".repeat(65);
    a.k(&format!("terminal add {long}"))
        .fails_with(&["not a usable name"]);
    kakehashi(&[
        "terminal",
        "add",
        "t9",
        "--note",
        "two\nlines",
        "--data-dir",
        s(&a.dir),
    ])
    .fails_with(&["--note: control characters"]);
    let note = "n".repeat(201);
    a.k(&format!("terminal add t9 --note {note}"))
        .fails_with(&["--note: at most 200 characters"]);
    assert_unchanged(&before, &a.snapshot());
    assert_eq!(
        a.k("terminal frobnicate x").code,
        2,
        "clap refuses an unknown subcommand"
    );
}

#[test]
fn a_damaged_database_is_named_and_left_alone() {
    let a = Appliance::new();
    write(&a.dir.join("gateway.db"), vec![0x5a; 8192]);
    let before = a.snapshot();
    let run = a
        .k("terminal list")
        .fails_with(&["gateway.db: not an SQLite database"]);
    assert!(run.stderr.contains(s(&a.dir)), "{}", run.stderr);
    a.k("user list")
        .fails_with(&["gateway.db: not an SQLite database"]);
    assert_unchanged(&before, &a.snapshot());
}

#[test]
fn the_data_dir_comes_from_the_environment_too() {
    let a = Appliance::new();
    let dir = s(&a.dir);
    kakehashi_env(
        &["terminal", "add", "env-terminal"],
        &[("KAKEHASHI_DATA_DIR", dir)],
    )
    .ok();
    assert!(a.k("terminal list").ok().contains("env-terminal"));
    let help = kakehashi(&["terminal", "--help"]).ok();
    assert!(
        help.contains("KAKEHASHI_DATA_DIR")
            && help.contains("KAKEHASHI_CONFIG")
            && help.contains("/etc/kakehashi/gateway.toml"),
        "{help}"
    );
}

#[test]
fn users_are_added_changed_locked_and_removed_without_showing_a_secret() {
    let a = Appliance::new();
    let pw = a.file("pw", &format!("{PASSWORD}\nsecond line ignored\n"));
    let up = a.file("up", &format!("{UPSTREAM_SECRET}\n"));
    let mut outputs = Vec::new();
    let mut ok = |run: Run| {
        outputs.push(format!("{}{}", run.stdout, run.stderr));
        run.ok()
    };

    let out = ok(a.k(&format!(
        "user add reception --password-file {pw} --upstream-id orca-user1 --upstream-password-file {up}"
    )));
    assert!(
        out.contains("added user reception (scopes client,reference,write, upstream account orca-user1)"),
        "{out}"
    );
    assert_eq!(mode(&a.dir.join("gateway.db")), 0o600);
    ok(kakehashi_env(
        &["user", "add", "dr.sato@sakura", "--data-dir", s(&a.dir)],
        &[("KAKEHASHI_USER_PASSWORD", "another-good-password")],
    ));

    // What is stored: an argon2id hash with OWASP parameters, not the password.
    let (hash, upstream): (String, String) = a
        .db()
        .query_row(
            "SELECT hash, upstream_password FROM users WHERE id = 'reception'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
    assert_eq!(upstream, UPSTREAM_SECRET, "the gateway must be able to send it");
    assert!(kakehashi_gateway::store::users::verify_password(
        &hash,
        PASSWORD.as_bytes()
    ));

    let new_pw = a.file("pw2", "a-brand-new-password\n");
    let out = ok(a.k(&format!("user passwd reception --password-file {new_pw}")));
    assert!(out.contains("changed the password of user reception"), "{out}");
    let hash2: String = a
        .db()
        .query_row("SELECT hash FROM users WHERE id = 'reception'", [], |r| r.get(0))
        .expect("row");
    assert!(kakehashi_gateway::store::users::verify_password(
        &hash2, b"a-brand-new-password"
    ));
    assert!(!kakehashi_gateway::store::users::verify_password(
        &hash2,
        PASSWORD.as_bytes()
    ));

    ok(a.k("user lock reception"));
    let table = ok(a.k("user list"));
    assert!(
        table.lines().next().is_some_and(|l| l.starts_with("ID")),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("reception"))
        .expect("listed");
    assert!(row.contains("locked") && row.contains("orca-user1"), "{table}");

    let list = a.json("user");
    assert_eq!(list.len(), 2);
    let reception = list.iter().find(|u| u["id"] == "reception").expect("listed");
    assert_eq!(reception["locked"], true);
    assert_eq!(reception["upstream"], true);
    assert_eq!(reception["upstream_id"], "orca-user1");
    assert!(reception.get("hash").is_none() && reception.get("password").is_none());
    assert!(reception["created"].as_str().is_some() && reception["changed"].as_str().is_some());

    ok(a.k("user unlock reception"));
    ok(a.k("user set-upstream reception --clear"));
    assert_eq!(a.json("user")[1]["upstream"], false);
    ok(a.k(&format!(
        "user set-upstream reception --upstream-id orca-user2 --upstream-password-file {up}"
    )));
    assert_eq!(a.json("user")[1]["upstream_id"], "orca-user2");
    ok(a.k("user remove dr.sato@sakura"));
    assert_eq!(a.json("user").len(), 1);

    let all = outputs.join("\n");
    for secret in [
        PASSWORD, UPSTREAM_SECRET, "another-good-password", "a-brand-new-password",
    ] {
        assert!(!all.contains(secret), "{secret} was printed:\n{all}");
    }
}

#[test]
fn user_refusals_name_the_problem_never_the_password_and_change_nothing() {
    let a = Appliance::new();
    let pw = a.file("pw", &format!("{PASSWORD}\n"));
    a.k(&format!("user add alice --password-file {pw}")).ok();
    a.k(&format!("user add bob --password-file {pw}")).ok();
    a.k("user lock bob").ok();
    let before = a.snapshot();

    let short = a.file("short", "tooshort9\n");
    let same = a.file("same", "CAROL.KATO\n");
    let empty = a.file("empty", "\nsecond\n");
    let runs = [
        a.k(&format!("user add alice --password-file {pw}"))
            .fails_with(&["user \"alice\" already exists"]),
        a.k(&format!("user add carol --password-file {short}"))
            .fails_with(&["password refused: it must have at least 10 characters"]),
        a.k(&format!("user add carol.kato --password-file {same}"))
            .fails_with(&["password refused: it must not be the user ID"]),
        a.k(&format!("user add carol --password-file {empty}"))
            .fails_with(&["its first line is empty"]),
        a.k("user add carol --password-file /nonexistent/pw")
            .fails_with(&["/nonexistent/pw"]),
        a.k("user add carol").fails_with(&[
            "no password given",
            "--password-file",
            "KAKEHASHI_USER_PASSWORD",
        ]),
        a.k(&format!("user add bad:id --password-file {pw}"))
            .fails_with(&["user ID \"bad:id\": use 1 to 64"]),
        a.k(&format!("user add {} --password-file {pw}", "x".repeat(65)))
            .fails_with(&["use 1 to 64"]),
        a.k(&format!("user passwd ghost --password-file {pw}"))
            .fails_with(&["user \"ghost\" does not exist"]),
        a.k(&format!("user passwd alice --password-file {short}"))
            .fails_with(&["at least 10 characters"]),
        a.k("user lock ghost")
            .fails_with(&["user \"ghost\" does not exist"]),
        a.k("user remove ghost")
            .fails_with(&["user \"ghost\" does not exist"]),
        a.k("user set-upstream ghost --clear")
            .fails_with(&["user \"ghost\" does not exist"]),
        a.k("user lock bob")
            .fails_with(&["user \"bob\" is already locked; nothing changed"]),
        a.k("user unlock alice")
            .fails_with(&["user \"alice\" is already unlocked; nothing changed"]),
        a.k(&format!(
            "user set-upstream alice --upstream-id a:b --upstream-password-file {pw}"
        ))
        .fails_with(&["--upstream-id: must not be empty or contain ':'"]),
    ];
    for run in runs {
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains(PASSWORD) && !all.contains("tooshort9"), "{all}");
    }
    let env_short = kakehashi_env(
        &["user", "add", "carol", "--data-dir", s(&a.dir)],
        &[("KAKEHASHI_USER_PASSWORD", "short")],
    );
    env_short.fails_with(&["at least 10 characters"]);
    assert_eq!(
        a.k("user set-upstream alice --upstream-id x").code,
        2,
        "needs its password file"
    );
    assert_eq!(
        a.k("user set-upstream alice").code,
        2,
        "needs --upstream-id or --clear"
    );
    assert_unchanged(&before, &a.snapshot());
}

#[test]
fn a_new_schema_version_is_refused_by_an_older_binary() {
    let a = Appliance::new();
    a.k("terminal add t1").ok();
    a.db()
        .pragma_update(None, "user_version", 99)
        .expect("set version");
    let before = a.snapshot();
    a.k("terminal list")
        .fails_with(&["gateway.db: schema version 99", "upgrade kakehashi"]);
    assert_unchanged(&before, &a.snapshot());
}
