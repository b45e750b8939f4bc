//! The documentation: every key `gateway.toml` accepts is explained in `docs/configuration.md`.
//!
//! The keys come from the real parser, not from a list kept by hand: a minimal valid
//! configuration is parsed with `toml::from_str::<Config>`, with an unknown key injected at a
//! table; `Config` denies unknown fields at every level, so serde answers "unknown field `…`,
//! expected one of `a`, `b`, …", which names every key of that table. Each key is then probed:
//! given a table holding an unknown key, a nested table answers with its own list; given an array
//! of such tables, an array of tables does; anything else is a leaf. A field added to any
//! configuration struct is found without touching this file.

use std::collections::BTreeSet;
use std::path::Path;

use kakehashi_gateway::config::Config;
use toml::{Table, Value};

/// A configuration with only what is required: every other key is found by probing.
const MINIMAL: &str = r#"
data_dir = "data"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"

[[listener]]
address = "127.0.0.1:8443"

[upstream]
url = "https://engine.example.test"
ca = "ca.pem"
cert = "uplink.pem"
key = "uplink.key"
user = "ormaster"
password_file = "upstream.password"
"#;

/// The key injected to make serde list a table's keys; no struct has a field of this name.
const PROBE: &str = "zz_not_a_key";

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `[a.b]`: a table with keys of its own.
    Table,
    /// `[[a.b]]`: an array of such tables.
    Array,
    /// A value: string, number, boolean, address…
    Leaf,
}

/// One step of a path from the root: the key and what it holds.
type KeyPath = Vec<(String, Kind)>;

fn dotted(path: &[(String, Kind)]) -> String {
    path.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(".")
}

/// The table at `path` inside `root`, created (as a table, or an array of one table) where the
/// minimal configuration does not have it; the first element of an array.
fn table_at<'a>(root: &'a mut Table, path: &[(String, Kind)]) -> &'a mut Table {
    let mut table = root;
    for (key, kind) in path {
        let slot = table.entry(key.clone()).or_insert_with(|| match kind {
            Kind::Array => Value::Array(vec![Value::Table(Table::new())]),
            _ => Value::Table(Table::new()),
        });
        table = match slot {
            Value::Table(t) => t,
            Value::Array(items) => match items.first_mut() {
                Some(Value::Table(t)) => t,
                other => panic!("{key}: an array whose first element is not a table: {other:?}"),
            },
            other => panic!("{key}: expected a table on the way, found {other:?}"),
        };
    }
    table
}

/// Parses the minimal configuration with `value` set at `path` + `key`, as `gateway check` would
/// (without the checks of the files it names), and returns serde's error, if any.
fn parse_with(path: &[(String, Kind)], key: &str, value: Value) -> Option<String> {
    let mut root: Table = toml::from_str(MINIMAL).expect("the minimal configuration is TOML");
    table_at(&mut root, path).insert(key.to_owned(), value);
    let text = toml::to_string(&root).expect("a table serializes");
    toml::from_str::<Config>(&text).err().map(|e| e.to_string())
}

/// A table holding only the probe key.
fn probe_table() -> Value {
    Value::Table(Table::from_iter([(PROBE.to_owned(), Value::Integer(0))]))
}

/// The keys serde lists when the probe is refused, or `None` if it was not refused as an unknown
/// field (then the value at that place is not a table of known keys).
fn listed_keys(error: Option<String>) -> Option<Vec<String>> {
    let error = error?;
    let needle = format!("unknown field `{PROBE}`");
    let start = error.find(&needle)? + needle.len();
    let line = error[start..].lines().next().unwrap_or("");
    // ", expected one of `a`, `b`", ", expected `a` or `b`", ", expected `a`", or
    // ", there are no fields".
    let keys = line
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    Some(keys)
}

/// Every key of the table at `path` (the root for an empty path), recursively: each as its path.
fn discover(path: &KeyPath, into: &mut Vec<KeyPath>) {
    let keys = listed_keys(parse_with(path, PROBE, Value::Integer(0))).unwrap_or_else(|| {
        panic!(
            "{}: an unknown key was not refused as an unknown field; does every configuration \
             struct still have #[serde(deny_unknown_fields)]?",
            if path.is_empty() {
                "the root".into()
            } else {
                dotted(path)
            }
        )
    });
    assert!(!keys.is_empty(), "{}: serde listed no keys", dotted(path));
    for key in keys {
        let kind = if listed_keys(parse_with(path, &key, probe_table())).is_some() {
            Kind::Table
        } else if listed_keys(parse_with(path, &key, Value::Array(vec![probe_table()]))).is_some() {
            Kind::Array
        } else {
            Kind::Leaf
        };
        let mut child = path.clone();
        child.push((key, kind));
        into.push(child.clone());
        if kind != Kind::Leaf {
            discover(&child, into);
        }
    }
}

/// How the reference names a key: `[table]`, `[[array]]`, or the dotted key, in backticks.
fn spelled(path: &[(String, Kind)]) -> String {
    match path.last().map(|(_, k)| *k) {
        Some(Kind::Table) => format!("`[{}]`", dotted(path)),
        Some(Kind::Array) => format!("`[[{}]]`", dotted(path)),
        _ => format!("`{}`", dotted(path)),
    }
}

#[test]
fn the_probe_finds_the_keys_it_must() {
    let mut keys = Vec::new();
    discover(&Vec::new(), &mut keys);
    let found: BTreeSet<String> = keys.iter().map(|p| spelled(p)).collect();
    // A few of every kind and depth, so that a probe that finds too little cannot pass the next
    // test by finding nothing.
    for expected in [
        "`data_dir`",
        "`[tls]`",
        "`tls.crl`",
        "`[[listener]]`",
        "`listener.fallback`",
        "`limits.workers`",
        "`[failover]`",
        "`[[failover.route]]`",
        "`failover.route.ttl_secs`",
        "`[wireguard]`",
        "`[[wireguard.port]]`",
        "`wireguard.port.tls`",
        "`[est]`",
        "`est.crl_days`",
    ] {
        assert!(
            found.contains(expected),
            "{expected} not found by the probe; it found:\n{found:#?}"
        );
    }
    assert!(
        !found.iter().any(|k| k.contains("source")),
        "a #[serde(skip)] field was listed: {found:#?}"
    );
}

#[test]
fn every_gateway_toml_key_is_in_docs_configuration_md() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path.display()));
    let mut keys = Vec::new();
    discover(&Vec::new(), &mut keys);
    let missing: Vec<String> = keys
        .iter()
        .map(|p| spelled(p))
        .filter(|k| !doc.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not explain {} of the {} keys gateway.toml accepts (write each as shown, in \
         backticks, in the reference):\n  {}",
        doc_path.display(),
        missing.len(),
        keys.len(),
        missing.join("\n  ")
    );
}
