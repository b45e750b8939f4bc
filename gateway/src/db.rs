//! STUB until the store branch merges.
use std::path::Path;
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Sql(String),
}
pub fn open(data_dir: &Path) -> Result<rusqlite::Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Sql(e.to_string()))?;
    rusqlite::Connection::open(data_dir.join("gateway.db")).map_err(|e| StoreError::Sql(e.to_string()))
}
