//! The push API: a WebSocket at `/ws` on which a client subscribes to events and receives them.
//!
//! ```text
//! → {"command":"subscribe","req.id":"1","event":"*"}
//! ← {"command":"subscribed","req.id":"1","sub.id":1}
//! ← {"command":"event","sub.id":1,"data":{"event":"accept","action":"register","body":{…}}}
//! ```

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Serves one WebSocket connection until the client leaves or the engine stops.
pub async fn session<S>(io: S, mut events: broadcast::Receiver<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let mut subscriptions: Vec<(u64, String)> = Vec::new();
    let mut next_id = 1u64;
    loop {
        tokio::select! {
            incoming = rx.next() => {
                let reply = match incoming {
                    Some(Ok(Message::Text(text))) => command(&text, &mut subscriptions, &mut next_id),
                    Some(Ok(Message::Ping(p))) => Some(Message::Pong(p)),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => None,
                };
                if let Some(m) = reply
                    && tx.send(m).await.is_err() {
                        break;
                    }
            }
            event = events.recv() => match event {
                Ok(text) => {
                    let Ok(data) = serde_json::from_str::<Value>(&text) else { continue };
                    let name = data["event"].as_str().unwrap_or_default().to_owned();
                    for (id, filter) in &subscriptions {
                        if filter == "*" || *filter == name {
                            let m = json!({ "command": "event", "sub.id": id, "data": data });
                            if tx.send(Message::text(m.to_string())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// Answers one client command.
fn command(text: &str, subscriptions: &mut Vec<(u64, String)>, next_id: &mut u64) -> Option<Message> {
    let Ok(req) = serde_json::from_str::<Value>(text) else {
        return Some(Message::text(
            json!({ "command": "error", "message": "not JSON" }).to_string(),
        ));
    };
    let req_id = req.get("req.id").cloned().unwrap_or(Value::Null);
    let reply = match req["command"].as_str() {
        Some("subscribe") => {
            let event = req["event"].as_str().unwrap_or("*").to_owned();
            let id = *next_id;
            *next_id += 1;
            subscriptions.push((id, event));
            json!({ "command": "subscribed", "req.id": req_id, "sub.id": id })
        }
        Some("unsubscribe") => {
            let id = req["sub.id"].as_u64();
            subscriptions.retain(|(s, _)| Some(*s) != id);
            json!({ "command": "unsubscribed", "req.id": req_id })
        }
        _ => json!({ "command": "error", "req.id": req_id, "message": "unknown command" }),
    };
    Some(Message::text(reply.to_string()))
}
