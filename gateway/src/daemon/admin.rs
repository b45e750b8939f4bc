//! The admin listener: Prometheus metrics, a health check and the status report (`/status.json`,
//! what `kakehashi status` reads), plain HTTP on loopback by default. It carries no terminal
//! traffic and no secrets; whoever can reach it learns counts, terminal names and certificate
//! dates (the status report's operator's sections), which is why it stays on loopback.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::daemon::gateway::Gateway;

/// Serves `/metrics` and `/health` until the task is dropped.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(gateway.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(gateway: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            crate::daemon::failover::refresh_metrics(&gateway);
            crate::est::refresh_metrics(gateway.authority.as_ref(), &gateway.metrics);
            let stale = gateway.live.now().crl_stale().is_some();
            crate::metrics::Metrics::set(&gateway.metrics.crl_stale, u64::from(stale));
            let checks = gateway.people.password_checks();
            crate::metrics::Metrics::set(&gateway.metrics.password_checks_total, checks);
            crate::backup::state::refresh_metrics(&gateway.status.data_dir, &gateway.metrics);
            let sources = gateway.status.clone();
            let mut firmware = String::new();
            if let Ok((disk, slots)) =
                tokio::task::spawn_blocking(move || (sources.disk(), sources.firmware())).await
            {
                crate::budget::refresh_metrics(&disk, &gateway.metrics);
                firmware = slots.map(|s| s.metrics()).unwrap_or_default();
            }
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                gateway.metrics.render() + &crate::daemon::failover::render_paths(&gateway) + &firmware,
            )
        }
        "/status.json" => {
            let sources = gateway.status.clone();
            match tokio::task::spawn_blocking(move || sources.collect(true)).await {
                Ok(report) => (StatusCode::OK, "application/json", report.json()),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "the status could not be gathered\n".into(),
                ),
            }
        }
        "/health" if gateway.audit.is_failing() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "audit log cannot be written\n".into(),
        ),
        "/health" => {
            let mode = gateway.failover.health.mode().as_str();
            let sources = gateway.status.clone();
            let firmware = tokio::task::spawn_blocking(move || sources.firmware())
                .await
                .ok()
                .flatten()
                .map(|s| s.line() + "\n")
                .unwrap_or_default();
            (
                StatusCode::OK,
                "text/plain",
                format!("ok\nhybrid mode: {mode}\n{firmware}"),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /health or /status.json\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}
