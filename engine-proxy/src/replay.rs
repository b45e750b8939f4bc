//! Handing the journal back to the cloud: in order, each entry exactly once.
//!
//! Exactly once rests on two things. The journal marks an entry delivered only after the cloud
//! answered it, so a gateway killed in between sends it again after restarting; and every attempt
//! carries the entry's idempotency key, so the cloud applies a repeated entry once and answers it
//! as the first time. Entries go one at a time, oldest first: a reception cancelled offline is
//! never handed back before its registration.
//!
//! Before an entry goes, the gateway is asked who it is made for now ([`Caller`]): the terminal
//! and person that wrote it offline must still be allowed to make it (enabled, and holding the
//! scope the call needs), or it is quarantined with the reason and never reaches the cloud.
//!
//! The cloud's answer settles the entry: success (an `Api_Result` of zeros or a warning) is
//! delivered; a refusal (a non-zero `Api_Result`, or a 4xx other than 408 and 429) is
//! quarantined for an operator and the next entry goes; anything transient (no answer, a 5xx,
//! 408, 429) is tried again after a backoff that doubles up to 30 s.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};

use crate::failover::IDEMPOTENCY_KEY;
use crate::format::{self, Format};
use crate::health::Health;
use crate::journal::{Entry, Journal, Settlement};
use crate::upstream::Upstream;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle replayer looks for entries an operator put back (`journal retry`).
const RECOUNT: Duration = Duration::from_secs(1);

/// Who an entry is made for now: the engine credential to send it with, or how it settles without
/// being sent (quarantined: its terminal or person may no longer make it; retried: that could
/// not be told now).
pub type Caller = Box<dyn Fn(&Entry) -> Result<HeaderValue, Settlement> + Send + Sync>;
/// Told of every settled attempt, for the audit log and metrics.
pub type Observer = Box<dyn Fn(&Entry, &Settlement) + Send + Sync>;

/// Runs for as long as the gateway does.
pub async fn hand_back(
    journal: Arc<Journal>,
    health: Arc<Health>,
    paths: Vec<Upstream>,
    caller: Caller,
    observer: Observer,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        health.set_backlog(journal.pending());
        if journal.pending() == 0 {
            tokio::select! {
                () = journal.appended.notified() => {}
                () = tokio::time::sleep(RECOUNT) => {
                    if let Err(e) = journal.recount() {
                        tracing::warn!("{e}");
                    }
                }
            }
            continue;
        }
        health.until_up().await;
        let next = {
            let journal = journal.clone();
            tokio::task::spawn_blocking(move || journal.oldest_pending()).await
        };
        let entry = match next {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) => {
                let _ = journal.recount();
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!("cannot read the journal: {e}");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
            Err(e) => {
                tracing::error!("the journal reader failed: {e}");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        // The preferred path, as for new calls; the entry's idempotency key makes a second
        // attempt over another path safe.
        let path = health.preferred().unwrap_or(0);
        let (settlement, sent) = match (caller(&entry), paths.get(path)) {
            (Err(unsent), _) => (unsent, false),
            (Ok(_), None) => (
                Settlement::Retry {
                    error: format!("no client for path {path}"),
                },
                false,
            ),
            (Ok(credential), Some(cloud)) => {
                let settlement = tokio::select! {
                    s = send(cloud, &entry, credential) => s,
                    () = health.path_went_down(path) => Settlement::Retry {
                        error: "the cloud went down while the entry was being sent".into(),
                    },
                };
                (settlement, true)
            }
        };
        let transient = matches!(settlement, Settlement::Retry { .. });
        if let Err(e) = journal.settle(entry.id, settlement.clone()).await {
            tracing::error!("cannot record the outcome of journal entry #{}: {e}", entry.id);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        observer(&entry, &settlement);
        if transient {
            // Only an attempt at the cloud says anything about the cloud (not a user database
            // that could not be read).
            if sent {
                health.suspect(path);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
        }
    }
}

/// One attempt at one entry.
async fn send(cloud: &Upstream, entry: &Entry, authorization: HeaderValue) -> Settlement {
    let mut req = Request::new(Full::new(entry.body.clone()).map_err(|e| match e {}).boxed());
    *req.method_mut() = match entry.method.parse() {
        Ok(m) => m,
        Err(_) => {
            return quarantine(
                None,
                None,
                Bytes::new(),
                format!("the method {:?} is not HTTP", entry.method),
            );
        }
    };
    *req.uri_mut() = match entry.path.parse() {
        Ok(u) => u,
        Err(e) => {
            return quarantine(
                None,
                None,
                Bytes::new(),
                format!("the path {:?}: {e}", entry.path),
            );
        }
    };
    let headers = req.headers_mut();
    if let Some(v) = entry
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    match HeaderValue::from_str(&entry.idempotency_key) {
        Ok(v) => headers.insert(IDEMPOTENCY_KEY, v),
        Err(_) => {
            return quarantine(
                None,
                None,
                Bytes::new(),
                "the idempotency key is not a header value".into(),
            );
        }
    };
    let resp = match cloud.forward(req, authorization).await {
        Ok(resp) => resp,
        Err(e) => return Settlement::Retry { error: e.to_string() },
    };
    let status = resp.status();
    let answer = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Settlement::Retry {
                error: format!("the cloud's answer broke off: {e}"),
            };
        }
    };
    if status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
        )
    {
        return Settlement::Retry {
            error: format!("the cloud answered {status}"),
        };
    }
    let format = Format::from_query(entry.path.split_once('?').map(|(_, q)| q));
    let api_result = format::api_result(format, &answer);
    if !status.is_success() {
        let reason = format!(
            "the cloud refused it: {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        );
        return quarantine(Some(status.as_u16()), api_result, answer, reason);
    }
    match api_result {
        Some(code) if !format::is_success(&code) => {
            let message = format::api_result_message(format, &answer).unwrap_or_default();
            let reason = format!("the cloud refused it: Api_Result {code} {message}");
            quarantine(Some(status.as_u16()), Some(code), answer, reason)
        }
        api_result => Settlement::Delivered {
            status: status.as_u16(),
            api_result,
            answer,
        },
    }
}

fn quarantine(status: Option<u16>, api_result: Option<String>, answer: Bytes, reason: String) -> Settlement {
    Settlement::Quarantined {
        status,
        api_result,
        answer,
        reason,
    }
}
