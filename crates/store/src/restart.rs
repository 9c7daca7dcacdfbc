//! Task restart patterns: management per network (= per TaskHub) and
//! restart resolution, which result recording runs after every failure.
//!
//! Patterns are Python `re` regular expressions applied with *search* semantics;
//! they are compiled with `fancy-regex`, which accepts Python's syntax including
//! look-around and back-references. Unlike upstream, which only fails when resolution
//! later compiles the pattern, an invalid pattern is rejected when it is added.

use std::collections::{BTreeMap, HashMap};

use alchemiscale_model::hash::{restart_pattern_key, taskhub_key};
use alchemiscale_model::json::{parse, Value};
use alchemiscale_model::{ScopedKey, TaskStatus};
use fancy_regex::Regex;
use sqlx::AnyConnection;

use crate::db::{execute_in_chunks, fetch_in_chunks, get_i64, get_opt_str, get_str, Arg};
use crate::error::{Result, StoreError};
use crate::tasks::{apply_status, cancel_on_hub, network_row_id, StatusCause};
use crate::{Backend, Store};

const NOT_A_NETWORK: &str = "`network` ScopedKey does not correspond to an `AlchemicalNetwork`";

fn require_network_key(network: &ScopedKey) -> Result<()> {
    if network.qualname() != "AlchemicalNetwork" {
        return Err(StoreError::Invalid(NOT_A_NETWORK.into()));
    }
    Ok(())
}

fn require_max_retries(max_retries: i64) -> Result<()> {
    if max_retries < 1 {
        return Err(StoreError::Invalid(format!("the number of allowed restarts must be a positive integer, got {max_retries}")));
    }
    Ok(())
}

/// Compile a restart pattern as Python's `re.compile` would (no flags).
fn compile_pattern(pattern: &str) -> Result<Regex> {
    if pattern.is_empty() {
        return Err(StoreError::Invalid("restart patterns must be non-empty strings".into()));
    }
    Regex::new(pattern).map_err(|e| StoreError::Invalid(format!("invalid restart pattern {pattern:?}: {e}")))
}

/// The distinct patterns of `patterns`, in first-occurrence order.
fn distinct(patterns: &[String]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    patterns.iter().map(String::as_str).filter(|p| seen.insert(*p)).collect()
}

impl Store {
    /// Attach restart patterns to a network's TaskHub, all in one
    /// transaction: each pattern gets (or keeps) its record with `max_retries`, starts
    /// applying (num_retries 0) to every task actioned on the hub, and restart resolution
    /// then runs over all of the hub's actioned tasks, so tasks already in `error`
    /// are restarted or cancelled at once.
    ///
    /// Re-adding a pattern the hub already has keeps upstream's behaviour: its
    /// `max_retries` is overwritten and its counters on currently actioned tasks are reset
    /// to 0 — users rely on this to "re-arm" a pattern.
    ///
    /// Errors (all [`StoreError::Invalid`], nothing stored): a key that is not a network's,
    /// an unknown network, `max_retries` < 1, an empty pattern, or a pattern that is not a
    /// valid regular expression (deliberately checked here; upstream only fails later,
    /// when a failure is being recorded).
    pub async fn add_restart_patterns(&self, network: &ScopedKey, patterns: &[String], max_retries: i64) -> Result<()> {
        require_network_key(network)?;
        require_max_retries(max_retries)?;
        for p in patterns {
            compile_pattern(p)?;
        }
        let hub_sk = ScopedKey::new(taskhub_key(network), network.scope().clone())
            .map_err(|e| StoreError::Invalid(format!("invalid network key {network}: {e}")))?;
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else {
            return Err(StoreError::Invalid(format!("No such TaskHub in the database: {hub_sk} (network {network} not found)")));
        };
        for pattern in distinct(patterns) {
            let key = restart_pattern_key(pattern, &hub_sk);
            let row = sqlx::query(
                "INSERT INTO restart_pattern (gufe_key, network_id, pattern, max_retries) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (network_id, pattern) DO UPDATE SET max_retries = excluded.max_retries RETURNING id",
            )
            .bind(key.as_str())
            .bind(hub)
            .bind(pattern)
            .bind(max_retries)
            .fetch_one(&mut *tx)
            .await?;
            let pattern_id = get_i64(&row, 0)?;
            // new APPLIES for every actioned task; existing ones (re-added pattern) reset (Q3)
            sqlx::query(
                "INSERT INTO restart_applies (pattern_id, task_id, num_retries) \
                 SELECT $1, task_id, 0 FROM task_action WHERE network_id = $2 \
                 ON CONFLICT (pattern_id, task_id) DO UPDATE SET num_retries = 0",
            )
            .bind(pattern_id)
            .bind(hub)
            .execute(&mut *tx)
            .await?;
        }
        let rows = sqlx::query("SELECT task_id FROM task_action WHERE network_id = $1").bind(hub).fetch_all(&mut *tx).await?;
        let actioned: Vec<i64> = rows.iter().map(|r| get_i64(r, 0)).collect::<Result<_>>()?;
        resolve_restarts(&mut tx, self.backend, &actioned).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove the given patterns from a network's hub, with their APPLIES edges. Patterns the hub does not have, and unknown networks, are ignored; a key
    /// that is not a network's is [`StoreError::Invalid`].
    pub async fn remove_restart_patterns(&self, network: &ScopedKey, patterns: &[String]) -> Result<()> {
        require_network_key(network)?;
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else { return Ok(()) };
        let items: Vec<Arg> = distinct(patterns).into_iter().map(Arg::from).collect();
        let rows = fetch_in_chunks(
            &mut tx,
            self.backend,
            "SELECT id FROM restart_pattern WHERE network_id = $1 AND pattern IN ({})",
            &[Arg::I64(hub)],
            &items,
        )
        .await?;
        let ids: Vec<Arg> = rows.iter().map(|r| get_i64(r, 0).map(Arg::I64)).collect::<Result<_>>()?;
        delete_patterns(&mut tx, self.backend, &ids).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove every pattern of a network's hub; unknown networks are
    /// ignored, a key that is not a network's is [`StoreError::Invalid`].
    pub async fn clear_restart_patterns(&self, network: &ScopedKey) -> Result<()> {
        require_network_key(network)?;
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else { return Ok(()) };
        let rows = sqlx::query("SELECT id FROM restart_pattern WHERE network_id = $1").bind(hub).fetch_all(&mut *tx).await?;
        let ids: Vec<Arg> = rows.iter().map(|r| get_i64(r, 0).map(Arg::I64)).collect::<Result<_>>()?;
        delete_patterns(&mut tx, self.backend, &ids).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Set `max_retries` of the listed patterns of a network's hub;
    /// patterns the hub does not have, and unknown networks, are ignored. Counters are left
    /// alone and no resolution runs (as upstream). Unlike upstream, `max_retries` must be
    /// ≥ 1 (route U52).
    pub async fn set_restart_pattern_max_retries(&self, network: &ScopedKey, patterns: &[String], max_retries: i64) -> Result<()> {
        require_network_key(network)?;
        require_max_retries(max_retries)?;
        let mut tx = self.begin_write().await?;
        let Some(hub) = network_row_id(&mut tx, network).await? else { return Ok(()) };
        let items: Vec<Arg> = distinct(patterns).into_iter().map(Arg::from).collect();
        execute_in_chunks(
            &mut tx,
            self.backend,
            "UPDATE restart_pattern SET max_retries = $1 WHERE network_id = $2 AND pattern IN ({})",
            &[Arg::I64(max_retries), Arg::I64(hub)],
            &items,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Per input network, its hub's `(pattern, max_retries)` pairs sorted by pattern
    /// (upstream returns a set); empty for unknown networks. A key that is not a
    /// network's is [`StoreError::Invalid`] (upstream: a server error, route U51).
    pub async fn get_restart_patterns(&self, networks: &[ScopedKey]) -> Result<Vec<Vec<(String, i64)>>> {
        for n in networks {
            require_network_key(n)?;
        }
        let mut conn = self.reader().acquire().await?;
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            let Some(hub) = network_row_id(&mut conn, n).await? else {
                out.push(Vec::new());
                continue;
            };
            let rows = sqlx::query("SELECT pattern, max_retries FROM restart_pattern WHERE network_id = $1 ORDER BY pattern")
                .bind(hub)
                .fetch_all(&mut *conn)
                .await?;
            out.push(rows.iter().map(|r| Ok((get_str(r, 0)?, get_i64(r, 1)?))).collect::<Result<_>>()?);
        }
        Ok(out)
    }
}

/// Delete restart patterns by row id, APPLIES first (the foreign key also cascades, but
/// the store does not rely on it).
async fn delete_patterns(conn: &mut AnyConnection, backend: Backend, ids: &[Arg]) -> Result<()> {
    execute_in_chunks(conn, backend, "DELETE FROM restart_applies WHERE pattern_id IN ({})", &[], ids).await?;
    execute_in_chunks(conn, backend, "DELETE FROM restart_pattern WHERE id IN ({})", &[], ids).await?;
    Ok(())
}

/// One APPLIES edge of a task in `error`, with its pattern.
struct Applies {
    task: i64,
    pattern_id: i64,
    num_retries: i64,
    hub: i64,
    pattern: String,
    max_retries: i64,
}

/// Sort key of a PDRR with tracebacks: creation time (unparsable or missing times sort
/// first), then row ids so ties resolve deterministically.
type Recency = (Option<chrono::DateTime<chrono::FixedOffset>>, i64, i64);

fn recency(datetime_created: Option<&str>, pdrr_id: i64, tracebacks_id: i64) -> Recency {
    (datetime_created.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()), pdrr_id, tracebacks_id)
}

/// Python `re.search(pattern, text)` is truthy. The one common difference between the
/// dialects is `$`: without flags Python's also matches just before a newline that ends
/// the string (tracebacks end with one), so a text ending in `\n` is also searched
/// without it. A failed evaluation (backtracking limit) counts as no match.
fn python_search(re: &Regex, text: &str) -> bool {
    re.is_match(text).unwrap_or(false) || text.strip_suffix('\n').is_some_and(|t| re.is_match(t).unwrap_or(false))
}

/// The `tracebacks` strings of a stored Tracebacks keyed dict.
fn traceback_texts(body: &str) -> Result<Vec<String>> {
    let corrupt = || StoreError::Invalid("corrupt Tracebacks record in store".into());
    let v = parse(body).map_err(|_| corrupt())?;
    let list = v.get("tracebacks").and_then(Value::as_array).ok_or_else(corrupt)?;
    list.iter().map(|s| s.as_str().map(str::to_string).ok_or_else(corrupt)).collect()
}

/// Restart resolution for the given tasks, inside the caller's transaction.
///
/// Only tasks in `error` with at least one APPLIES edge are considered. A task's *latest
/// tracebacks* are those of its PDRR with the greatest `datetime_created` among its PDRRs
/// that have a Tracebacks record. Per hub with patterns applying to the task, the decision
/// is: no tracebacks → cancel; a matching pattern (regex search over each traceback
/// string) whose `num_retries + 1 > max_retries` → cancel; a matching pattern within
/// budget → increment its counter and keep (unless another pattern cancels); no matching
/// pattern → cancel. Then counters are incremented, cancelled (task, hub) pairs lose their
/// ACTIONS and that hub's APPLIES ([`cancel_on_hub`]), and every considered task still in
/// `error` with an APPLIES edge left goes back to `waiting` through [`apply_status`].
///
/// A stored pattern that does not compile (it can only come from a store written by
/// something else) or whose evaluation fails (backtracking limit) counts as not matching,
/// so recording a failure never fails because of a pattern.
pub(crate) async fn resolve_restarts(conn: &mut AnyConnection, backend: Backend, task_ids: &[i64]) -> Result<()> {
    let mut ids = task_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let id_args: Vec<Arg> = ids.iter().map(|&i| Arg::I64(i)).collect();
    let rows = fetch_in_chunks(
        conn,
        backend,
        "SELECT ra.task_id, ra.pattern_id, ra.num_retries, rp.network_id, rp.pattern, rp.max_retries \
         FROM restart_applies ra JOIN restart_pattern rp ON rp.id = ra.pattern_id JOIN task t ON t.id = ra.task_id \
         WHERE t.status = $1 AND ra.task_id IN ({})",
        &[Arg::from(TaskStatus::Error.as_str())],
        &id_args,
    )
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut applies: Vec<Applies> = rows
        .iter()
        .map(|r| {
            Ok(Applies {
                task: get_i64(r, 0)?,
                pattern_id: get_i64(r, 1)?,
                num_retries: get_i64(r, 2)?,
                hub: get_i64(r, 3)?,
                pattern: get_str(r, 4)?,
                max_retries: get_i64(r, 5)?,
            })
        })
        .collect::<Result<_>>()?;
    applies.sort_by_key(|a| (a.task, a.hub, a.pattern_id));
    let mut candidates: Vec<i64> = applies.iter().map(|a| a.task).collect();
    candidates.dedup();
    let candidate_args: Vec<Arg> = candidates.iter().map(|&i| Arg::I64(i)).collect();

    // latest tracebacks per candidate task
    let tb_rows = fetch_in_chunks(
        conn,
        backend,
        "SELECT tr.task_id, p.id, p.datetime_created, tb.id, tb.body FROM task_result tr JOIN pdrr p ON p.id = tr.pdrr_id \
         JOIN pdrr_tracebacks pt ON pt.pdrr_id = p.id JOIN tracebacks tb ON tb.id = pt.tracebacks_id WHERE tr.task_id IN ({})",
        &[],
        &candidate_args,
    )
    .await?;
    let mut latest: HashMap<i64, (Recency, String)> = HashMap::new();
    for r in &tb_rows {
        let task = get_i64(r, 0)?;
        let key = recency(get_opt_str(r, 2)?.as_deref(), get_i64(r, 1)?, get_i64(r, 3)?);
        if latest.get(&task).is_none_or(|(k, _)| key > *k) {
            latest.insert(task, (key, get_str(r, 4)?));
        }
    }
    let mut texts: HashMap<i64, Vec<String>> = HashMap::with_capacity(latest.len());
    for (task, (_, body)) in latest {
        texts.insert(task, traceback_texts(&body)?);
    }

    // decisions per (task, hub): None = no pattern matched, Some(true) = cancel,
    // Some(false) = restart
    let mut compiled: HashMap<&str, Option<Regex>> = HashMap::new();
    let mut decisions: BTreeMap<(i64, i64), Option<bool>> = BTreeMap::new();
    let mut increments: BTreeMap<i64, Vec<Arg>> = BTreeMap::new(); // pattern id → task ids
    for a in &applies {
        let decision = decisions.entry((a.task, a.hub)).or_insert(None);
        if *decision == Some(true) {
            continue;
        }
        let Some(tracebacks) = texts.get(&a.task) else {
            *decision = Some(true);
            continue;
        };
        let re = compiled.entry(a.pattern.as_str()).or_insert_with(|| match Regex::new(&a.pattern) {
            Ok(re) => Some(re),
            Err(e) => {
                tracing::warn!(pattern = %a.pattern, error = %e, "stored restart pattern does not compile; treated as not matching");
                None
            }
        });
        let matched = re.as_ref().is_some_and(|re| tracebacks.iter().any(|t| python_search(re, t)));
        if matched {
            if a.num_retries + 1 > a.max_retries {
                *decision = Some(true);
            } else {
                increments.entry(a.pattern_id).or_default().push(Arg::I64(a.task));
                *decision = Some(false);
            }
        }
    }

    for (pattern_id, tasks) in &increments {
        execute_in_chunks(
            conn,
            backend,
            "UPDATE restart_applies SET num_retries = num_retries + 1 WHERE pattern_id = $1 AND task_id IN ({})",
            &[Arg::I64(*pattern_id)],
            tasks,
        )
        .await?;
    }
    let mut cancels: BTreeMap<i64, Vec<Arg>> = BTreeMap::new(); // hub → task ids
    for ((task, hub), decision) in &decisions {
        if *decision != Some(false) {
            cancels.entry(*hub).or_default().push(Arg::I64(*task));
        }
    }
    for (hub, tasks) in &cancels {
        cancel_on_hub(conn, backend, *hub, tasks).await?;
    }

    // whatever some hub still wants restarted goes back to waiting
    let rows = fetch_in_chunks(
        conn,
        backend,
        "SELECT DISTINCT t.id FROM task t JOIN restart_applies ra ON ra.task_id = t.id WHERE t.status = $1 AND t.id IN ({})",
        &[Arg::from(TaskStatus::Error.as_str())],
        &candidate_args,
    )
    .await?;
    let restart: Vec<(i64, TaskStatus)> = rows.iter().map(|r| Ok((get_i64(r, 0)?, TaskStatus::Error))).collect::<Result<_>>()?;
    apply_status(conn, backend, &restart, TaskStatus::Waiting, Some(StatusCause::Restart)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile_with_python_syntax_and_search_semantics() {
        let re = compile_pattern(r"(?<=Error: )time(?:out)?").unwrap();
        assert!(re.is_match("Traceback ...\nRuntimeError: timeout\n").unwrap());
        assert!(compile_pattern(r"(\w+) \1").unwrap().is_match("xx said said yy").unwrap());
        assert!(compile_pattern(r"(?P<kind>Runtime)Error").is_ok());
        assert!(compile_pattern("").is_err());
        assert!(matches!(compile_pattern("(unclosed"), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn search_semantics_follow_python() {
        let re = compile_pattern("boom$").unwrap();
        assert!(python_search(&re, "Traceback\nRuntimeError: boom\n"));
        assert!(python_search(&re, "RuntimeError: boom"));
        assert!(!python_search(&re, "RuntimeError: boom\n\n"));
        assert!(!python_search(&re, "boom happened\n"));
        let anchored = compile_pattern("^Runtime").unwrap();
        assert!(!python_search(&anchored, "Traceback\nRuntimeError"));
        assert!(python_search(&compile_pattern(r"(?P<w>o)(?P=w)").unwrap(), "boom"));
    }

    #[test]
    fn recency_orders_python_isoformat_times() {
        let a = recency(Some("2024-01-02T03:04:05+00:00"), 9, 9);
        let b = recency(Some("2024-01-02T03:04:05.000001+00:00"), 1, 1);
        assert!(b > a);
        assert!(a > recency(None, 10, 10));
    }

    #[test]
    fn traceback_bodies() {
        let body = r#"{"tracebacks": ["a", "b"], "source_keys": [], "failure_keys": [], "__qualname__": "Tracebacks"}"#;
        assert_eq!(traceback_texts(body).unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert!(traceback_texts("{}").is_err());
    }
}
