//! The reference engine's database: one SQLite file, WAL mode, every write durable before it is
//! answered, and the answers of idempotent writes kept so a repeated key returns the first answer.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// What the database could not do, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StoreError {
    pub path: String,
    #[source]
    pub source: rusqlite::Error,
}

/// A patient, as the engine's `Patient_Information` record carries one.
#[derive(Clone, Debug)]
pub struct Patient {
    pub id: i64,
    pub name: String,
    pub kana: String,
    pub birth_date: String,
    pub sex: String,
}

/// A reception or an appointment: a patient expected at a time, for a department.
#[derive(Clone, Debug)]
pub struct Visit {
    pub id: i64,
    pub patient_id: i64,
    pub date: String,
    pub time: String,
    pub department: String,
    pub physician: String,
}

/// A stored answer to an idempotent write.
#[derive(Clone, Debug)]
pub struct Answer {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The database, shared by every connection.
pub struct Store {
    conn: Mutex<Connection>,
    path: String,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    CREATE TABLE IF NOT EXISTS patients (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, kana TEXT NOT NULL,
        birth_date TEXT NOT NULL, sex TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS visits (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, patient_id INTEGER NOT NULL,
        date TEXT NOT NULL, time TEXT NOT NULL, department TEXT NOT NULL, physician TEXT NOT NULL,
        cancelled INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE IF NOT EXISTS medical (
        id INTEGER PRIMARY KEY AUTOINCREMENT, patient_id INTEGER NOT NULL, date TEXT NOT NULL,
        body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY, path TEXT NOT NULL, content_type TEXT NOT NULL, body BLOB NOT NULL);
";

/// Which visits: receptions (`acceptmodv2`) or appointments (`appointmodv2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisitKind {
    Reception,
    Appointment,
}

impl VisitKind {
    fn tag(self) -> &'static str {
        match self {
            VisitKind::Reception => "reception",
            VisitKind::Appointment => "appointment",
        }
    }
}

impl Store {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let name = path.display().to_string();
        let err = |source| StoreError {
            path: name.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: name,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut conn).map_err(|source| StoreError {
            path: self.path.clone(),
            source,
        })
    }

    /// Fills an empty database with a few fictional patients (`--seed demo`).
    pub fn seed_demo(&self) -> Result<(), StoreError> {
        const PATIENTS: [(i64, &str, &str, &str, &str); 5] = [
            (1, "日医 太郎", "ニチイ タロウ", "1958-01-10", "1"),
            (2, "日医 花子", "ニチイ ハナコ", "1962-04-22", "2"),
            (3, "架橋 一郎", "カケハシ イチロウ", "1985-09-03", "1"),
            (4, "桜井 美咲", "サクライ ミサキ", "1999-12-24", "2"),
            (5, "山田 健", "ヤマダ ケン", "2012-06-15", "1"),
        ];
        self.with(|c| {
            let tx = c.transaction()?;
            for (id, name, kana, birth, sex) in PATIENTS {
                tx.execute(
                    "INSERT OR IGNORE INTO patients (id, name, kana, birth_date, sex) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, name, kana, birth, sex],
                )?;
            }
            tx.commit()
        })
    }

    /// Runs a read.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.with(|c| f(c))
    }

    /// Runs a write in one transaction. With an idempotency key, a key seen before returns the
    /// first answer (and the path it answered) without running `f`; a new key's answer is stored
    /// in the same transaction as the write, so a crash can never separate them.
    pub fn write(
        &self,
        key: Option<&str>,
        path: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<Answer>,
    ) -> Result<Written, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(key) = key {
                let seen = tx
                    .query_row(
                        "SELECT path, content_type, body FROM idempotency WHERE key = ?1",
                        [key],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                Answer {
                                    content_type: r.get(1)?,
                                    body: r.get(2)?,
                                },
                            ))
                        },
                    )
                    .optional()?;
                if let Some((first_path, answer)) = seen {
                    return Ok(Written::Repeated { first_path, answer });
                }
            }
            let answer = f(&tx)?;
            if let Some(key) = key {
                tx.execute(
                    "INSERT INTO idempotency (key, path, content_type, body) VALUES (?1, ?2, ?3, ?4)",
                    params![key, path, answer.content_type, answer.body],
                )?;
            }
            tx.commit()?;
            Ok(Written::New(answer))
        })
    }
}

/// The outcome of [`Store::write`].
#[derive(Debug)]
pub enum Written {
    New(Answer),
    /// The idempotency key was used before: this is the first answer, given for `first_path`.
    Repeated {
        first_path: String,
        answer: Answer,
    },
}

pub fn patient(c: &Connection, id: i64) -> rusqlite::Result<Option<Patient>> {
    c.query_row(
        "SELECT id, name, kana, birth_date, sex FROM patients WHERE id = ?1",
        [id],
        |r| {
            Ok(Patient {
                id: r.get(0)?,
                name: r.get(1)?,
                kana: r.get(2)?,
                birth_date: r.get(3)?,
                sex: r.get(4)?,
            })
        },
    )
    .optional()
}

/// Records a visit and returns its id.
pub fn add_visit(c: &Connection, kind: VisitKind, v: &Visit) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO visits (kind, patient_id, date, time, department, physician) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![kind.tag(), v.patient_id, v.date, v.time, v.department, v.physician],
    )?;
    Ok(c.last_insert_rowid())
}

/// Cancels a visit; false if there was no such live visit.
pub fn cancel_visit(c: &Connection, kind: VisitKind, id: i64, patient_id: i64) -> rusqlite::Result<bool> {
    let n = c.execute(
        "UPDATE visits SET cancelled = 1 WHERE kind = ?1 AND id = ?2 AND patient_id = ?3 AND cancelled = 0",
        params![kind.tag(), id, patient_id],
    )?;
    Ok(n == 1)
}

/// The live visits of a day, in order.
pub fn visits(c: &Connection, kind: VisitKind, date: &str) -> rusqlite::Result<Vec<Visit>> {
    let mut stmt = c.prepare(
        "SELECT id, patient_id, date, time, department, physician FROM visits
         WHERE kind = ?1 AND date = ?2 AND cancelled = 0 ORDER BY time, id",
    )?;
    let rows = stmt.query_map(params![kind.tag(), date], |r| {
        Ok(Visit {
            id: r.get(0)?,
            patient_id: r.get(1)?,
            date: r.get(2)?,
            time: r.get(3)?,
            department: r.get(4)?,
            physician: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Records medical data for a patient and returns its id.
pub fn add_medical(c: &Connection, patient_id: i64, date: &str, body: &str) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO medical (patient_id, date, body) VALUES (?1, ?2, ?3)",
        params![patient_id, date, body],
    )?;
    Ok(c.last_insert_rowid())
}

/// Counts for the daily report: receptions, appointments, medical records.
pub fn counts(c: &Connection, date: &str) -> rusqlite::Result<(i64, i64, i64)> {
    let count = |sql: &str| c.query_row(sql, [date], |r| r.get::<_, i64>(0));
    Ok((
        count("SELECT COUNT(*) FROM visits WHERE kind = 'reception' AND date = ?1 AND cancelled = 0")?,
        count("SELECT COUNT(*) FROM visits WHERE kind = 'appointment' AND date = ?1 AND cancelled = 0")?,
        count("SELECT COUNT(*) FROM medical WHERE date = ?1")?,
    ))
}
