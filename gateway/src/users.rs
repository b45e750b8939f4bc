//! STUB until the store branch merges.
use crate::db::StoreError;
use rusqlite::Connection;
pub struct Credential {
    pub id: String,
    pub password: zeroize::Zeroizing<String>,
}
pub struct User {
    pub id: String,
    pub hash: String,
    pub locked: bool,
    pub upstream: Option<Credential>,
}
pub fn lookup(conn: &Connection, id: &str) -> Result<Option<User>, StoreError> {
    let _ = conn;
    Ok((id == "alice").then(|| User {
        id: id.into(),
        hash: String::new(),
        locked: false,
        upstream: None,
    }))
}
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    let _ = hash;
    password == b"correct horse"
}
pub fn dummy_verify(password: &[u8]) {
    let _ = password;
}
pub fn add(conn: &Connection, id: &str, password: &[u8]) -> Result<(), StoreError> {
    let _ = (conn, id, password);
    Ok(())
}
