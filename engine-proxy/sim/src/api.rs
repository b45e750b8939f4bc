//! The engine's calls: what each path reads, writes and answers.
//!
//! Business outcomes are HTTP 200 with an `Api_Result` code in the body, as the real engine does:
//! `00` success, anything else a refusal with `Api_Result_Message` saying why.

use engine_proxy::format::{self as body, Format};
use rusqlite::Connection;
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, UtcOffset};

use crate::store::{self, Answer, Patient, Store, StoreError, Visit, VisitKind, Written};

/// One parsed call.
pub struct Call<'a> {
    /// `group/name`, without the optional `/api` prefix: `api01rv2/patientgetv2`.
    pub path: &'a str,
    pub query: &'a str,
    pub format: Format,
    pub request: Map<String, Value>,
    pub idempotency_key: Option<&'a str>,
}

/// What a call produced.
pub enum Outcome {
    /// An answer, rendered (and for writes, stored) in the call's format.
    Answer(Answer),
    /// Something to push to WebSocket subscribers after answering, with the answer.
    AnswerAndEvent(Answer, Value),
    /// The idempotency key was used before for another call.
    KeyReused {
        first_path: String,
    },
    NotFound,
}

/// Whether a path changes state (and so honours idempotency keys).
pub fn is_write(path: &str) -> bool {
    matches!(
        path,
        "orca11/acceptmodv2" | "orca14/appointmodv2" | "api21/medicalmodv2"
    )
}

/// Runs a call against the store.
pub fn handle(store: &Store, call: &Call) -> Result<Outcome, StoreError> {
    let format = call.format;
    let class = query_value(call.query, "class").unwrap_or("01").to_owned();
    let req = |name: &str| {
        call.request
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let render = |root: &str, fields: Map<String, Value>| answer(format, root, fields);

    // Since late 2024 a reception call can also read: `Request_Number` 00 lists the receptions
    // (what the gateway's rules classify as a read), whatever the class.
    if call.path == "orca11/acceptmodv2"
        && req("acceptreq").get("Request_Number").and_then(Value::as_str) == Some("00")
    {
        let (_, fields) = store.read(|c| visit_list(c, VisitKind::Reception, &req("acceptreq")))?;
        return Ok(Outcome::Answer(render("acceptres", fields)));
    }
    if is_write(call.path) {
        let mut event = None;
        let written = store.write(call.idempotency_key, call.path, |c| {
            let (root, fields) = match call.path {
                "orca11/acceptmodv2" => {
                    visit_mod(c, VisitKind::Reception, &class, &req("acceptreq"), &mut event)?
                }
                "orca14/appointmodv2" => {
                    visit_mod(c, VisitKind::Appointment, &class, &req("appointreq"), &mut event)?
                }
                _ => medical_mod(c, &req("medicalreq"))?,
            };
            Ok(render(root, fields))
        })?;
        return Ok(match written {
            Written::Repeated { first_path, .. } if first_path != call.path => {
                Outcome::KeyReused { first_path }
            }
            Written::Repeated { answer, .. } => Outcome::Answer(answer),
            Written::New(answer) => match event {
                Some(e) => Outcome::AnswerAndEvent(answer, e),
                None => Outcome::Answer(answer),
            },
        });
    }

    let (root, fields) = match call.path {
        "api01rv2/patientgetv2" => {
            let id = query_value(call.query, "id").unwrap_or("");
            store.read(|c| patient_get(c, id))?
        }
        "api01rv2/patientlst2v2" => store.read(|c| patient_list(c, &req("patientlst2req")))?,
        "api01rv2/acceptlstv2" => {
            store.read(|c| visit_list(c, VisitKind::Reception, &req("acceptlstreq")))?
        }
        "api01rv2/appointlstv2" => {
            store.read(|c| visit_list(c, VisitKind::Appointment, &req("appointlstreq")))?
        }
        "api01rv2/system01dailyv2" => store.read(|c| daily(c, &req("system01_dailyreq")))?,
        "api01rv2/systeminfv2" => ("systeminfv2res", ok_fields()),
        _ => return Ok(Outcome::NotFound),
    };
    Ok(Outcome::Answer(render(root, fields)))
}

fn answer(format: Format, root: &str, fields: Map<String, Value>) -> Answer {
    let mut top = Map::new();
    top.insert(root.to_owned(), Value::Object(fields));
    Answer {
        content_type: format.content_type().to_owned(),
        body: body::render(format, &top),
    }
}

/// The value of `name` in a query string.
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn jst_now() -> OffsetDateTime {
    OffsetDateTime::now_utc().to_offset(UtcOffset::from_hms(9, 0, 0).unwrap_or(UtcOffset::UTC))
}

fn today() -> String {
    let t = jst_now();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

fn now_time() -> String {
    let t = jst_now();
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// The fields every answer starts with.
fn result(code: &str, message: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("Information_Date".into(), json!(today()));
    m.insert("Information_Time".into(), json!(now_time()));
    m.insert("Api_Result".into(), json!(code));
    m.insert("Api_Result_Message".into(), json!(message));
    m
}

fn ok_fields() -> Map<String, Value> {
    result("00", "処理終了")
}

fn text<'a>(record: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    record
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn patient_record(p: &Patient) -> Value {
    json!({
        "Patient_ID": p.id.to_string(),
        "WholeName": p.name,
        "WholeName_inKana": p.kana,
        "BirthDate": p.birth_date,
        "Sex": p.sex,
    })
}

type Fields = (&'static str, Map<String, Value>);

fn patient_get(c: &Connection, id: &str) -> rusqlite::Result<Fields> {
    const ROOT: &str = "patientinfores";
    let Ok(id) = id.parse::<i64>() else {
        return Ok((ROOT, result("01", "患者番号が未設定です")));
    };
    Ok(match store::patient(c, id)? {
        Some(p) => {
            let mut f = ok_fields();
            f.insert("Patient_Information".into(), patient_record(&p));
            (ROOT, f)
        }
        None => (ROOT, result("10", "該当患者は存在しません")),
    })
}

fn patient_list(c: &Connection, req: &Map<String, Value>) -> rusqlite::Result<Fields> {
    const ROOT: &str = "patientlst2res";
    let ids: Vec<i64> = match req.get("Patient_ID_Information") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("Patient_ID").and_then(Value::as_str)?.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        return Ok((ROOT, result("01", "患者番号が未設定です")));
    }
    let mut found = Vec::new();
    for id in ids {
        if let Some(p) = store::patient(c, id)? {
            found.push(patient_record(&p));
        }
    }
    let mut f = if found.is_empty() {
        result("10", "該当患者は存在しません")
    } else {
        ok_fields()
    };
    f.insert("Target_Patient_Count".into(), json!(found.len().to_string()));
    f.insert("Patient_Information".into(), Value::Array(found));
    Ok((ROOT, f))
}

/// Field names of receptions and appointments, which differ only in their prefix.
struct VisitNames {
    res: &'static str,
    list_res: &'static str,
    list: &'static str,
    date: &'static str,
    time: &'static str,
    id: &'static str,
    event: &'static str,
}

fn names(kind: VisitKind) -> VisitNames {
    match kind {
        VisitKind::Reception => VisitNames {
            res: "acceptres",
            list_res: "acceptlstres",
            list: "Acceptlst_Information",
            date: "Acceptance_Date",
            time: "Acceptance_Time",
            id: "Acceptance_Id",
            event: "accept",
        },
        VisitKind::Appointment => VisitNames {
            res: "appointres",
            list_res: "appointlstres",
            list: "Appointlst_Information",
            date: "Appointment_Date",
            time: "Appointment_Time",
            id: "Appointment_Id",
            event: "appoint",
        },
    }
}

fn visit_record(n: &VisitNames, v: &Visit, patient: Option<&Patient>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(n.id.into(), json!(v.id.to_string()));
    m.insert(n.date.into(), json!(v.date));
    m.insert(n.time.into(), json!(v.time));
    m.insert("Department_Code".into(), json!(v.department));
    m.insert("Physician_Code".into(), json!(v.physician));
    if let Some(p) = patient {
        m.insert("Patient_Information".into(), patient_record(p));
    }
    m
}

/// Registers (class 01) or cancels (class 02) a reception or appointment.
fn visit_mod(
    c: &Connection,
    kind: VisitKind,
    class: &str,
    req: &Map<String, Value>,
    event: &mut Option<Value>,
) -> rusqlite::Result<Fields> {
    let n = names(kind);
    let Some(patient_id) = text(req, "Patient_ID").and_then(|s| s.parse::<i64>().ok()) else {
        return Ok((n.res, result("01", "患者番号が未設定です")));
    };
    let Some(patient) = store::patient(c, patient_id)? else {
        return Ok((n.res, result("10", "該当患者は存在しません")));
    };
    match class {
        "01" => {
            let mut visit = Visit {
                id: 0,
                patient_id,
                date: text(req, n.date).map_or_else(today, str::to_owned),
                time: text(req, n.time).map_or_else(now_time, str::to_owned),
                department: text(req, "Department_Code").unwrap_or("01").to_owned(),
                physician: text(req, "Physician_Code").unwrap_or("10001").to_owned(),
            };
            visit.id = store::add_visit(c, kind, &visit)?;
            let record = visit_record(&n, &visit, Some(&patient));
            *event = Some(json!({ "event": n.event, "action": "register", "body": record }));
            let mut f = ok_fields();
            f.extend(record);
            Ok((n.res, f))
        }
        "02" => {
            let Some(id) = text(req, n.id).and_then(|s| s.parse::<i64>().ok()) else {
                return Ok((n.res, result("02", "取消対象のIDが未設定です")));
            };
            if !store::cancel_visit(c, kind, id, patient_id)? {
                return Ok((n.res, result("21", "取消対象が存在しません")));
            }
            *event = Some(json!({ "event": n.event, "action": "cancel", "body": { n.id: id.to_string() } }));
            let mut f = ok_fields();
            f.insert(n.id.into(), json!(id.to_string()));
            Ok((n.res, f))
        }
        other => Ok((n.res, result("91", &format!("処理区分({other})が不正です")))),
    }
}

fn visit_list(c: &Connection, kind: VisitKind, req: &Map<String, Value>) -> rusqlite::Result<Fields> {
    let n = names(kind);
    let date = text(req, n.date).map_or_else(today, str::to_owned);
    let mut items = Vec::new();
    for v in store::visits(c, kind, &date)? {
        let patient = store::patient(c, v.patient_id)?;
        items.push(Value::Object(visit_record(&n, &v, patient.as_ref())));
    }
    let mut f = if items.is_empty() {
        result("21", "対象がありません")
    } else {
        ok_fields()
    };
    f.insert(n.date.into(), json!(date));
    f.insert(n.list.into(), Value::Array(items));
    Ok((n.list_res, f))
}

fn medical_mod(c: &Connection, req: &Map<String, Value>) -> rusqlite::Result<Fields> {
    const ROOT: &str = "medicalres";
    let Some(patient_id) = text(req, "Patient_ID").and_then(|s| s.parse::<i64>().ok()) else {
        return Ok((ROOT, result("01", "患者番号が未設定です")));
    };
    if store::patient(c, patient_id)?.is_none() {
        return Ok((ROOT, result("10", "該当患者は存在しません")));
    }
    let date = text(req, "Perform_Date").map_or_else(today, str::to_owned);
    let body = Value::Object(req.clone()).to_string();
    store::add_medical(c, patient_id, &date, &body)?;
    let mut f = ok_fields();
    f.insert("Patient_ID".into(), json!(patient_id.to_string()));
    f.insert("Perform_Date".into(), json!(date));
    Ok((ROOT, f))
}

fn daily(c: &Connection, req: &Map<String, Value>) -> rusqlite::Result<Fields> {
    let date = text(req, "Base_Date").map_or_else(today, str::to_owned);
    let (receptions, appointments, medical) = store::counts(c, &date)?;
    let mut f = ok_fields();
    f.insert("Base_Date".into(), json!(date));
    f.insert("Reception_Count".into(), json!(receptions.to_string()));
    f.insert("Appointment_Count".into(), json!(appointments.to_string()));
    f.insert("Medical_Count".into(), json!(medical.to_string()));
    Ok(("system01_dailyres", f))
}
