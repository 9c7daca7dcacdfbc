//! Probing APIs through an outage (a restarted database, a killed instance): workers that
//! send one request after another and log what each got and when.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_client::{Client, ClientError, Method, Payload};

/// What one request (or store call) got, and when.
#[derive(Clone)]
pub struct Outcome {
    pub worker: &'static str,
    pub sent: Instant,
    pub took: Duration,
    /// HTTP status, or 0 for a connection-level failure.
    pub status: u16,
    pub detail: String,
}

impl Outcome {
    /// When the answer came.
    pub fn answered(&self) -> Instant {
        self.sent + self.took
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} after {:?}: {}", self.worker, self.status, self.took, self.detail)
    }
}

/// The outcomes of every worker of a probe, in the order they came.
pub type Log = Arc<Mutex<Vec<Outcome>>>;

/// One kind of request, sent again and again.
pub struct Probe {
    pub name: &'static str,
    pub client: Client,
    pub method: Method,
    pub path: String,
    pub body: Option<serde_json::Value>,
}

impl Probe {
    /// Send the request, then wait `pause`, until `stop`; log every answer (a failed
    /// re-login after a 401 is logged with its status, a connection failure as 0).
    pub async fn run(self, pause: Duration, stop: Arc<AtomicBool>, log: Log) {
        while !stop.load(Ordering::Relaxed) {
            let payload = self.body.as_ref().map_or(Payload::None, |b| Payload::Json(b.to_string()));
            let sent = Instant::now();
            let (status, detail) = match self.client.send(self.method.clone(), &self.path, payload).await {
                Ok(r) => (r.status, if r.status == 200 { String::new() } else { r.text() }),
                Err(ClientError::Http { status, detail, .. }) => (status, format!("login: {detail}")),
                Err(e) => (0, e.to_string()),
            };
            log.lock().unwrap().push(Outcome { worker: self.name, sent, took: sent.elapsed(), status, detail });
            tokio::time::sleep(pause).await;
        }
    }
}

/// Outcomes counted by (worker, status).
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut by: std::collections::BTreeMap<(&str, u16), usize> = Default::default();
    for o in outcomes {
        *by.entry((o.worker, o.status)).or_default() += 1;
    }
    format!("{by:?}")
}
