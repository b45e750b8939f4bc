//! STUB until the store branch merges.
use std::collections::HashMap;
#[derive(Clone, Debug)]
pub struct Terminal {
    pub name: String,
    pub enabled: bool,
    pub added: String,
    pub note: Option<String>,
}
#[derive(Debug, Default)]
pub struct Inventory {
    map: HashMap<String, Terminal>,
}
impl Inventory {
    pub fn load(conn: &rusqlite::Connection) -> Result<Inventory, crate::db::StoreError> {
        let _ = conn;
        let mut map = HashMap::new();
        for n in std::env::var("STUB_TERMINALS")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
        {
            map.insert(
                n.to_owned(),
                Terminal {
                    name: n.into(),
                    enabled: true,
                    added: String::new(),
                    note: None,
                },
            );
        }
        Ok(Inventory { map })
    }
    pub fn get(&self, name: &str) -> Option<&Terminal> {
        self.map.get(name)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn enabled_count(&self) -> usize {
        self.map.values().filter(|t| t.enabled).count()
    }
}
pub fn add(conn: &rusqlite::Connection, name: &str, note: Option<&str>) -> Result<(), crate::db::StoreError> {
    let _ = (conn, name, note);
    Ok(())
}
