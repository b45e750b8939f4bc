//! STUB until the store branch merges.
use crate::db::StoreError;
use std::path::Path;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Decision {
    #[default]
    Allow,
    Deny,
}
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub decision: Decision,
    pub reason: String,
    pub terminal: Option<String>,
    pub user: Option<String>,
    pub source: String,
    pub route: String,
    pub method: Option<String>,
    pub path: Option<String>,
    pub upstream: Option<String>,
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
}
#[derive(Clone)]
pub struct AuditLog;
impl AuditLog {
    pub fn open(data_dir: &Path) -> Result<AuditLog, StoreError> {
        let _ = data_dir;
        Ok(AuditLog)
    }
    pub async fn record(&self, entry: Entry) {
        eprintln!("AUDIT {entry:?}");
    }
    pub fn record_blocking(&self, entry: Entry) {
        eprintln!("AUDIT {entry:?}");
    }
    pub async fn close(self) {}
    pub fn is_failing(&self) -> bool {
        false
    }
}
