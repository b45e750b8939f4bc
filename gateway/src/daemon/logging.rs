//! The daemon's logs: through `tracing`, to stderr (stdout carries only `READY`).

/// Human-readable logs on a terminal, JSON under systemd (which sets `JOURNAL_STREAM`); the
/// level from `RUST_LOG` (default `info`). Logs go to stderr: stdout carries only `READY`.
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.json().init();
    } else {
        builder.init();
    }
}
