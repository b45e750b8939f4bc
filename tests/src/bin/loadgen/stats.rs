//! Counting and percentiles: every latency is kept (microseconds), sorted once at the end.

use std::time::Duration;

/// What one connection (or one handshake loop) counted.
#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    /// Responses with a status other than 200.
    pub bad_status: u64,
    /// Connections that failed: refused, reset, TLS alerts, malformed responses.
    pub io_errors: u64,
    pub latencies_us: Vec<u32>,
    /// The first error seen, to show what went wrong.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn error(&mut self, what: impl std::fmt::Display) {
        self.io_errors += 1;
        self.first_error.get_or_insert_with(|| what.to_string());
    }

    pub fn bad_status(&mut self, status: u16) {
        self.bad_status += 1;
        self.first_error
            .get_or_insert_with(|| format!("HTTP status {status}"));
    }

    pub fn record(&mut self, latency: Duration) {
        self.ok += 1;
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(mut tallies: Vec<Tally>) -> Tally {
        let mut all = tallies.pop().unwrap_or_default();
        for t in tallies {
            all.ok += t.ok;
            all.bad_status += t.bad_status;
            all.io_errors += t.io_errors;
            all.latencies_us.extend(t.latencies_us);
            if all.first_error.is_none() {
                all.first_error = t.first_error;
            }
        }
        all.latencies_us.sort_unstable();
        all
    }

    pub fn errors(&self) -> u64 {
        self.bad_status + self.io_errors
    }

    /// The `p`th percentile (0–100) of the sorted latencies, in microseconds.
    pub fn percentile(&self, p: f64) -> u32 {
        match self.latencies_us.len() {
            0 => 0,
            n => {
                let rank = ((p / 100.0) * n as f64).ceil() as usize;
                self.latencies_us[rank.clamp(1, n) - 1]
            }
        }
    }

    /// `p50_us=… p99_us=… max_us=… errors=…` for the RESULT line.
    pub fn fields(&self) -> String {
        format!(
            "p50_us={} p99_us={} max_us={} errors={} bad_status={} io_errors={}",
            self.percentile(50.0),
            self.percentile(99.0),
            self.latencies_us.last().copied().unwrap_or(0),
            self.errors(),
            self.bad_status,
            self.io_errors
        )
    }

    /// Prints the first error, if any, on stderr.
    pub fn explain(&self) {
        if let Some(e) = &self.first_error {
            eprintln!("loadgen: {} errors; the first: {e}", self.errors());
        }
    }
}
