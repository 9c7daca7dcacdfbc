//! Typed methods of the compute API, as upstream's `AlchemiscaleComputeClient`
//! calls them, plus the two extension routes our compute service uses, and the client
//! retry policy.
//!
//! * C6–C8 — [`Client::register`], [`Client::deregister`], [`Client::heartbeat`];
//! * C9–C11 — [`Client::query_taskhubs`], [`Client::claim_taskhub_tasks`],
//!   [`Client::claim_tasks`] (which tells "denied" (`null`) from "nothing to do");
//! * C13, C14 — [`Client::retrieve_task_transformation`], [`Client::set_task_result`];
//! * extensions — [`Client::task_wanted`] (`GET /tasks/{sk}/wanted`) and
//!   [`Client::release_tasks`] (`POST /computeservice/{csid}/release`).
//!
//! Retries: [`Client::send`] itself retries only connection errors and 502–504 with a
//! short fixed backoff (`max_retries`). A compute service wants upstream's policy instead
//! (404 also retried, exponential backoff with jitter, `-1` = forever): set
//! `client.max_retries = 0` and wrap calls in [`RetryPolicy::run`].

use std::future::Future;
use std::time::Duration;

use alchemiscale_model::json::{self, Value};
use alchemiscale_model::pdr::{latin1_string_into_bytes, upload_body};
use alchemiscale_model::{ComputeManagerId, ComputeServiceId, Scope, ScopedKey, ScopedKeyDict};
use serde_json::json;

use crate::{parse_keys, parse_opt_keys, Client, ClientError, Payload, Result};

/// Answer of C13: the transformation a task performs and, if the task extends another,
/// that task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskTransformation {
    /// The Transformation's keyed chain (dependencies first, the transformation last), as
    /// served: Python-dialect JSON kept losslessly.
    pub chain: Value,
    /// The extended task's ProtocolDAGResult blob (normally a zstd frame of keyed-chain
    /// JSON; results of old versions are plain JSON of a full dict).
    pub extends: Option<Vec<u8>>,
}

/// A TaskHub as C9 describes it with `return_gufe=True`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHubInfo {
    pub taskhub: ScopedKey,
    pub network: ScopedKey,
    pub weight: f64,
}

fn decode<T>(r: std::result::Result<T, impl std::fmt::Display>) -> Result<T> {
    r.map_err(|e| ClientError::Decode(e.to_string()))
}

fn service_id(v: &serde_json::Value) -> Result<ComputeServiceId> {
    let s = v.as_str().ok_or_else(|| ClientError::Decode(format!("expected a compute service id string, got {v}")))?;
    decode(s.parse::<ComputeServiceId>())
}

/// Query string of a scope filter (C9): concrete components only.
fn scope_query(scope: &Scope) -> String {
    let mut q = String::new();
    for (name, part) in [("org", scope.org()), ("campaign", scope.campaign()), ("project", scope.project())] {
        if let Some(p) = part {
            q.push_str(&format!("&{name}={p}"));
        }
    }
    q
}

impl Client {
    /// A client with TLS certificate verification switchable (`client_verify` of the
    /// compute-service settings). With `verify` true this is [`Client::new`].
    pub fn with_verify(base_url: &str, identifier: &str, key: &str, verify: bool) -> Result<Client> {
        let mut client = Client::new(base_url, identifier, key)?;
        if !verify {
            client.http = reqwest::Client::builder().pool_max_idle_per_host(64).danger_accept_invalid_certs(true).build()?;
        }
        Ok(client)
    }

    /// C6: register a compute service, optionally under a compute manager.
    pub async fn register(&self, id: &ComputeServiceId, manager: Option<&ComputeManagerId>) -> Result<ComputeServiceId> {
        let v = self
            .post(&format!("/computeservice/{id}/register"), &json!({ "compute_manager_id": manager.map(ToString::to_string) }))
            .await?;
        service_id(&v)
    }

    /// C7: deregister; the server returns the service's running tasks to `waiting`.
    pub async fn deregister(&self, id: &ComputeServiceId) -> Result<ComputeServiceId> {
        let v = self.post(&format!("/computeservice/{id}/deregister"), &json!({})).await?;
        service_id(&v)
    }

    /// C8: heartbeat.
    pub async fn heartbeat(&self, id: &ComputeServiceId) -> Result<ComputeServiceId> {
        let v = self.post(&format!("/computeservice/{id}/heartbeat"), &json!({})).await?;
        service_id(&v)
    }

    /// C9: TaskHubs visible in each of `scopes` (one request per scope, as upstream),
    /// without duplicates, in the server's order.
    pub async fn query_taskhubs(&self, scopes: &[Scope]) -> Result<Vec<ScopedKey>> {
        let mut out: Vec<ScopedKey> = Vec::new();
        for scope in scopes {
            for hub in parse_keys(&self.get(&format!("/taskhubs?return_gufe=False{}", scope_query(scope))).await?)? {
                if !out.contains(&hub) {
                    out.push(hub);
                }
            }
        }
        Ok(out)
    }

    /// C9 with `return_gufe=True`: each hub with its network and weight.
    pub async fn query_taskhubs_gufe(&self, scopes: &[Scope]) -> Result<Vec<TaskHubInfo>> {
        let mut out: Vec<TaskHubInfo> = Vec::new();
        for scope in scopes {
            let v = self.get(&format!("/taskhubs?return_gufe=True{}", scope_query(scope))).await?;
            let map = v.as_object().ok_or_else(|| ClientError::Decode("expected an object of TaskHubs".into()))?;
            for (hub, dict) in map {
                let taskhub: ScopedKey = decode(hub.parse())?;
                if out.iter().any(|h| h.taskhub == taskhub) {
                    continue;
                }
                let d: serde_json::Value = decode(serde_json::from_str(dict.as_str().unwrap_or("null")))?;
                let network = decode(d["network"].as_str().unwrap_or("").parse::<ScopedKey>())?;
                let weight = d["weight"].as_f64().ok_or_else(|| ClientError::Decode(format!("TaskHub {taskhub} has no numeric weight")))?;
                out.push(TaskHubInfo { taskhub, network, weight });
            }
        }
        Ok(out)
    }

    /// C10: claim up to `count` tasks from one TaskHub; claimed keys first, then `None`s.
    pub async fn claim_taskhub_tasks(
        &self,
        hub: &ScopedKey,
        id: &ComputeServiceId,
        count: usize,
        protocols: Option<&[String]>,
    ) -> Result<Vec<Option<ScopedKey>>> {
        let body = json!({ "compute_service_id": id.to_string(), "count": count, "protocols": protocols });
        parse_opt_keys(&self.post(&format!("/taskhubs/{hub}/claim"), &body).await?)
    }

    /// C11: claim up to `count` tasks across `scopes` (minus hubs in `scopes_exclude`).
    /// `None` means the server *denied* the claim (too many recent failures: back off);
    /// otherwise the claimed keys followed by `None`s (all `None`: nothing to do).
    pub async fn claim_tasks(
        &self,
        scopes: &[Scope],
        scopes_exclude: Option<&[Scope]>,
        id: &ComputeServiceId,
        count: usize,
        protocols: Option<&[String]>,
    ) -> Result<Option<Vec<Option<ScopedKey>>>> {
        let dicts = |s: &[Scope]| s.iter().map(Scope::to_dict).collect::<Vec<_>>();
        let body = json!({
            "scopes": dicts(scopes),
            "scopes_exclude": scopes_exclude.map(dicts),
            "compute_service_id": id.to_string(),
            "count": count,
            "protocols": protocols,
        });
        let v = self.post("/claim", &body).await?;
        if v.is_null() {
            return Ok(None);
        }
        parse_opt_keys(&v).map(Some)
    }

    /// C13: the task's transformation as a keyed chain, and the result of the task it
    /// extends (if any), decoded from its latin-1 string.
    pub async fn retrieve_task_transformation(&self, task: &ScopedKey) -> Result<TaskTransformation> {
        let text = self.get_text(&format!("/tasks/{task}/transformation/gufe")).await?;
        let v = decode(json::parse(&text))?;
        drop(text);
        let Value::Array(items) = v else { return Err(ClientError::Decode("expected a two-element array".into())) };
        let [chain, extends]: [Value; 2] = decode(items.try_into().map_err(|_| "expected a two-element array"))?;
        if !matches!(chain, Value::Array(_)) {
            return Err(ClientError::Decode("element 0 is not a keyed chain (a JSON array)".into()));
        }
        let extends = match extends {
            Value::Null => None,
            Value::String(s) => Some(decode(latin1_string_into_bytes(s))?),
            _ => return Err(ClientError::Decode("element 1 is neither null nor a latin-1 string".into())),
        };
        Ok(TaskTransformation { chain, extends })
    }

    /// C14: upload a ProtocolDAGResult blob (a zstd frame of its keyed-chain JSON) for
    /// `task`: the bytes codec (zstd inside) as upstream's client sends it, but spelled as
    /// compactly as JSON allows and not gzip-compressed ([`upload_body`]): upstream's
    /// `\u00XX` escapes and gzip cost seconds of CPU per 50 MB result on both sides, for a
    /// body only a third smaller. Any server that reads JSON reads it. Returns the new
    /// ProtocolDAGResultRef's key.
    pub async fn set_task_result(&self, task: &ScopedKey, blob: &[u8], id: &ComputeServiceId) -> Result<ScopedKey> {
        let body = upload_body(blob, &id.to_string());
        let v = self.post_payload(&format!("/tasks/{task}/results"), Payload::Raw { bytes: body, content_encoding: None }).await?;
        let d: ScopedKeyDict = decode(serde_json::from_value(v))?;
        decode(d.to_scoped_key())
    }

    /// Extension: is `task` still wanted from this service (running, claimed by it,
    /// actioned on a hub of an active network)?
    pub async fn task_wanted(&self, task: &ScopedKey, id: &ComputeServiceId) -> Result<bool> {
        let v = self.get(&format!("/tasks/{task}/wanted?compute_service_id={id}")).await?;
        v["wanted"].as_bool().ok_or_else(|| ClientError::Decode(format!("expected {{\"wanted\": bool}}, got {v}")))
    }

    /// Extension: give claimed tasks back (running → waiting); per input the key if it was
    /// released, else `None`.
    pub async fn release_tasks(&self, id: &ComputeServiceId, tasks: &[ScopedKey]) -> Result<Vec<Option<ScopedKey>>> {
        let keys: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        parse_opt_keys(&self.post(&format!("/computeservice/{id}/release"), &json!({ "tasks": keys })).await?)
    }
}

/// Upstream's client retry policy: connection errors and HTTP
/// 404/502/503/504 are retried; before retry `n` (1, 2, …) sleep
/// `min(max + base·U₁, baseⁿ + base·U₂)` seconds with U₁, U₂ uniform in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; `-1` retries forever.
    pub max_retries: i64,
    /// Backoff base (> 1).
    pub base_seconds: f64,
    /// Cap of one backoff sleep (before jitter).
    pub max_seconds: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 5, base_seconds: 2.0, max_seconds: 60.0 }
    }
}

impl RetryPolicy {
    /// Is this error worth another attempt?
    pub fn retryable(err: &ClientError) -> bool {
        match err {
            ClientError::Http { status, .. } => matches!(status, 404 | 502 | 503 | 504),
            ClientError::Transport(_) => true,
            ClientError::Decode(_) => false,
        }
    }

    /// The sleep before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let (u1, u2): (f64, f64) = (rand::random(), rand::random());
        let exp = self.base_seconds.powi(n.min(1000) as i32);
        let secs = (self.max_seconds + self.base_seconds * u1).min(exp + self.base_seconds * u2);
        Duration::from_secs_f64(if secs.is_finite() { secs.max(0.0) } else { self.max_seconds.max(0.0) })
    }

    /// Run `op` until it succeeds, fails with a non-retryable error, or the retries are
    /// used up (then the last error is returned). Dropping the future abandons the
    /// remaining attempts.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n: u32 = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if Self::retryable(&e) && (self.max_retries < 0 || i64::from(n) < self.max_retries) => {
                    n = n.saturating_add(1);
                    let wait = self.delay(n);
                    tracing::warn!(error = %e, retry = n, wait_s = wait.as_secs_f64(), "request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_formula() {
        let p = RetryPolicy { max_retries: 5, base_seconds: 2.0, max_seconds: 60.0 };
        for n in 1..=8u32 {
            let d = p.delay(n).as_secs_f64();
            let lo = (2f64.powi(n as i32)).min(60.0);
            let hi = (2f64.powi(n as i32) + 2.0).min(62.0);
            assert!(d >= lo && d < hi, "retry {n}: {d} not in [{lo}, {hi})");
        }
        assert!(RetryPolicy::retryable(&ClientError::Http { status: 404, reason: String::new(), detail: String::new() }));
        assert!(RetryPolicy::retryable(&ClientError::Http { status: 503, reason: String::new(), detail: String::new() }));
        assert!(!RetryPolicy::retryable(&ClientError::Http { status: 400, reason: String::new(), detail: String::new() }));
        assert!(!RetryPolicy::retryable(&ClientError::Decode(String::new())));
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit() {
        let p = RetryPolicy { max_retries: 2, base_seconds: 1.001, max_seconds: 0.0 };
        let mut calls = 0;
        let r: Result<()> = p
            .run(|| {
                calls += 1;
                async { Err(ClientError::Http { status: 503, reason: "Service Unavailable".into(), detail: String::new() }) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<()> = p
            .run(|| {
                calls += 1;
                async { Err(ClientError::Http { status: 422, reason: String::new(), detail: String::new() }) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
