//! What the web console reads: one call per page, each a handful of statements whose cost
//! follows what the page shows (a network's transformations and tasks, one task's history,
//! the last hours of activity), never the size of the whole store — except the overview's
//! census (task counts of every scope, one aggregate over the tasks), which the console
//! counts in the background and keeps (see `crates/console/src/cache.rs`).

use std::collections::BTreeMap;

use alchemiscale_model::{Scope, ScopedKey};
use sqlx::any::AnyRow;

use crate::db::{dialect, fetch_json_rows, get_f64, get_i64, get_opt_i64, get_opt_str, get_str, json_rows_select, Arg};
use crate::error::{Result, StoreError};
use crate::queries::{scope_condition, sk_from, StatusCounts};
use crate::strategy::StrategyState;
use crate::tasks::network_row_id;
use crate::Store;

const HOUR_MICROS: i64 = 3_600_000_000;

/// Task and network counts of one concrete scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeFigures {
    pub scope: Scope,
    /// Networks by state.
    pub networks: BTreeMap<String, i64>,
    /// Tasks by status.
    pub tasks: StatusCounts,
}

/// Claims and results per hour over the last hours, oldest bucket first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Start of the first bucket, µs since the epoch (a whole hour).
    pub start: i64,
    pub claims: Vec<i64>,
    pub results_ok: Vec<i64>,
    pub results_failed: Vec<i64>,
}

impl Activity {
    /// Adds another scope's activity over the same hours.
    pub fn add(&mut self, other: &Activity) {
        for (mine, theirs) in [
            (&mut self.claims, &other.claims),
            (&mut self.results_ok, &other.results_ok),
            (&mut self.results_failed, &other.results_failed),
        ] {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }
}

/// A network as the overview lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSummary {
    pub key: ScopedKey,
    pub name: Option<String>,
    pub state: String,
    pub weight: f64,
    pub transformations: i64,
    /// Successful results over its transformations.
    pub ok_results: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SystemNode {
    pub id: i64,
    pub key: ScopedKey,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransformationEdge {
    pub id: i64,
    pub key: ScopedKey,
    pub name: Option<String>,
    pub protocol: Option<String>,
    /// Chemical-system ids it connects, in attribute order (one for a NonTransformation).
    pub systems: Vec<i64>,
    pub ok_results: i64,
    /// Its tasks by status.
    pub tasks: StatusCounts,
    /// The most urgent priority (lowest number) among its waiting and running tasks.
    pub priority: Option<i64>,
}

/// What never changes once a network is submitted: its systems and transformations (the
/// console caches it with the drawing's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkStructure {
    pub id: i64,
    pub key: ScopedKey,
    pub name: Option<String>,
    pub systems: Vec<SystemNode>,
    /// Sorted by id; `tasks` empty and `ok_results` 0 here.
    pub transformations: Vec<TransformationEdge>,
}

/// What changes: state, weight, results and task counts per transformation, restart
/// patterns, the strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkLive {
    pub state: String,
    pub weight: f64,
    /// (transformation id, successful results), for those with any.
    pub ok_results: Vec<(i64, i64)>,
    /// (transformation id, status, tasks, their most urgent priority).
    pub tasks: Vec<(i64, String, i64, i64)>,
    pub restart_patterns: Vec<(String, i64)>,
    /// The strategy's class name and state, if one is set.
    pub strategy: Option<(String, StrategyState)>,
}

/// Everything the network page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkDetail {
    pub id: i64,
    pub key: ScopedKey,
    pub name: Option<String>,
    pub state: String,
    pub weight: f64,
    pub systems: Vec<SystemNode>,
    pub transformations: Vec<TransformationEdge>,
    pub restart_patterns: Vec<(String, i64)>,
    /// The strategy's class name and state, if one is set.
    pub strategy: Option<(String, StrategyState)>,
}

impl NetworkDetail {
    /// A network's structure with its live figures filled in.
    pub fn assemble(structure: &NetworkStructure, live: NetworkLive) -> NetworkDetail {
        let mut transformations = structure.transformations.clone();
        let index = |id: i64| transformations.binary_search_by_key(&id, |t| t.id).ok();
        let mut places = Vec::with_capacity(live.tasks.len() + live.ok_results.len());
        for (tf, status, n, priority) in live.tasks {
            places.push((index(tf), Some((status, priority)), n));
        }
        for (tf, n) in live.ok_results {
            places.push((index(tf), None, n));
        }
        for (i, status, n) in places {
            let Some(t) = i.map(|i| &mut transformations[i]) else { continue };
            match status {
                Some((status, priority)) => {
                    if status == "waiting" || status == "running" {
                        t.priority = Some(t.priority.map_or(priority, |p| p.min(priority)));
                    }
                    t.tasks.insert(status, n);
                }
                None => t.ok_results = n,
            }
        }
        NetworkDetail {
            id: structure.id,
            key: structure.key.clone(),
            name: structure.name.clone(),
            state: live.state,
            weight: live.weight,
            systems: structure.systems.clone(),
            transformations,
            restart_patterns: live.restart_patterns,
            strategy: live.strategy,
        }
    }
}

/// A task of a transformation, as the transformation page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSummary {
    pub key: ScopedKey,
    pub status: String,
    pub priority: i64,
    pub created: i64,
    /// Networks on which it is actioned.
    pub actioned_on: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultDetail {
    pub key: ScopedKey,
    pub ok: bool,
    pub created: Option<String>,
    pub creator: Option<String>,
    pub size: Option<i64>,
    pub tracebacks: Vec<String>,
}

/// Everything the task page shows. The status history is read from creation, every claim
/// (the claim log), every result and every other status change (the status log).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDetail {
    pub key: ScopedKey,
    pub status: String,
    pub priority: i64,
    pub created: i64,
    pub creator: Option<String>,
    pub transformation: (ScopedKey, Option<String>),
    pub extends: Option<ScopedKey>,
    /// (network, name, ACTIONS weight).
    pub actioned_on: Vec<(ScopedKey, Option<String>, f64)>,
    /// (service, µs), oldest first.
    pub claims: Vec<(String, i64)>,
    pub claimed_by: Option<String>,
    pub results: Vec<ResultDetail>,
    /// Status changes neither a claim nor a result made: (µs, previous, status, cause),
    /// oldest first (`task_status_log`).
    pub status_changes: Vec<(i64, String, String, String)>,
}

fn sk(r: &AnyRow, first: usize) -> Result<ScopedKey> {
    sk_from(&get_str(r, first)?, &get_str(r, first + 1)?, &get_str(r, first + 2)?, &get_str(r, first + 3)?)
}

fn scope_of(r: &AnyRow, first: usize) -> Result<Scope> {
    Scope::new(Some(&get_str(r, first)?), Some(&get_str(r, first + 1)?), Some(&get_str(r, first + 2)?))
        .map_err(|e| StoreError::Invalid(format!("stored scope: {e}")))
}

/// The hour (`YYYY-MM-DDTHH`) of an isoformat time, as results are bucketed.
fn hour_of(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default().format("%Y-%m-%dT%H").to_string()
}

/// A network summary's columns: key (gufe key, org, campaign, project), name, state,
/// weight, transformations, successful results.
type NetworkRow = (String, String, String, String, Option<String>, String, f64, i64, i64);

/// A transformation edge's columns: row id, key (four parts), name, protocol.
type TransformationRow = (i64, String, String, String, String, Option<String>, Option<String>);

impl Store {
    /// Task counts by status and network counts by state of every concrete scope inside
    /// `scopes` (disjoint scopes, as minimised).
    pub async fn console_scope_figures(&self, scopes: &[Scope]) -> Result<Vec<ScopeFigures>> {
        let mut out: BTreeMap<String, ScopeFigures> = BTreeMap::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("t", scope, &mut args);
            let sql = format!("SELECT t.org, t.campaign, t.project, t.status, COUNT(*) FROM task t WHERE {cond} GROUP BY t.org, t.campaign, t.project, t.status");
            for r in self.fetch(&sql, &args).await? {
                let s = scope_of(&r, 0)?;
                let entry = out.entry(s.to_string()).or_insert_with(|| ScopeFigures {
                    scope: s,
                    networks: BTreeMap::new(),
                    tasks: StatusCounts::new(),
                });
                entry.tasks.insert(get_str(&r, 3)?, get_i64(&r, 4)?);
            }
            let mut args = Vec::new();
            let cond = scope_condition("o", scope, &mut args);
            let sql = format!(
                "SELECT o.org, o.campaign, o.project, n.state, COUNT(*) FROM network n JOIN gufe_object o ON o.id = n.id \
                 WHERE {cond} GROUP BY o.org, o.campaign, o.project, n.state"
            );
            for r in self.fetch(&sql, &args).await? {
                let s = scope_of(&r, 0)?;
                let entry = out.entry(s.to_string()).or_insert_with(|| ScopeFigures {
                    scope: s,
                    networks: BTreeMap::new(),
                    tasks: StatusCounts::new(),
                });
                entry.networks.insert(get_str(&r, 3)?, get_i64(&r, 4)?);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Networks inside `scopes` (at most `limit`, by scope then name), with their numbers
    /// of transformations and successful results (one pass over the transformations of
    /// every network in the scopes).
    pub async fn console_networks(&self, scopes: &[Scope], limit: i64) -> Result<Vec<NetworkSummary>> {
        let mut out = Vec::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("o", scope, &mut args);
            let inner = format!(
                "SELECT o.gufe_key AS c0, o.org AS c1, o.campaign AS c2, o.project AS c3, o.name AS c4, n.state AS c5, n.weight AS c6, \
                 COALESCE(s.tfs, 0) AS c7, COALESCE(s.ok, 0) AS c8 FROM network n JOIN gufe_object o ON o.id = n.id \
                 LEFT JOIN (SELECT x.network_id AS network_id, COUNT(*) AS tfs, CAST(SUM(tf.ok_results) AS BIGINT) AS ok \
                 FROM network_transformation x JOIN transformation tf ON tf.id = x.transformation_id GROUP BY x.network_id) s ON s.network_id = n.id \
                 WHERE {cond} ORDER BY o.org, o.campaign, o.project, o.name, o.gufe_key LIMIT {limit}"
            );
            let rows: Vec<NetworkRow> = self.json_rows(9, &inner, &args).await?;
            for (k, o, c, p, name, state, weight, transformations, ok_results) in rows {
                out.push(NetworkSummary { key: sk_from(&k, &o, &c, &p)?, name, state, weight, transformations, ok_results });
            }
        }
        out.sort_by(|a, b| (a.key.scope().to_string(), &a.name).cmp(&(b.key.scope().to_string(), &b.name)));
        out.truncate(limit.max(0) as usize);
        Ok(out)
    }

    /// Claims and results per hour over the `hours` hours up to `now` (µs), per concrete
    /// scope (of the claimed task, of the result), sorted by scope.
    pub async fn console_activity_by_scope(&self, hours: usize, now: i64) -> Result<Vec<(Scope, Activity)>> {
        let start = (now.div_euclid(HOUR_MICROS) - hours as i64 + 1) * HOUR_MICROS;
        let empty = Activity { start, claims: vec![0; hours], results_ok: vec![0; hours], results_failed: vec![0; hours] };
        let mut out: BTreeMap<String, (Scope, Activity)> = BTreeMap::new();
        fn entry<'a>(out: &'a mut BTreeMap<String, (Scope, Activity)>, empty: &Activity, r: &AnyRow) -> Result<&'a mut Activity> {
            let scope = scope_of(r, 0)?;
            Ok(&mut out.entry(scope.to_string()).or_insert_with(|| (scope, empty.clone())).1)
        }
        let claims = "SELECT t.org, t.campaign, t.project, (l.claimed - $1) / $2, COUNT(*) FROM task_claim_log l \
                      JOIN task t ON t.id = l.task_id WHERE l.claimed >= $1 GROUP BY t.org, t.campaign, t.project, (l.claimed - $1) / $2";
        for r in self.fetch(claims, &[Arg::I64(start), Arg::I64(HOUR_MICROS)]).await? {
            let (hour, n) = (get_i64(&r, 3)?, get_i64(&r, 4)?);
            let Ok(i) = usize::try_from(hour) else { continue };
            if let Some(slot) = entry(&mut out, &empty, &r)?.claims.get_mut(i) {
                *slot += n;
            }
        }
        let results = "SELECT p.org, p.campaign, p.project, SUBSTR(p.datetime_created, 1, 13), p.ok, COUNT(*) FROM pdrr p \
                       WHERE p.datetime_created >= $1 GROUP BY p.org, p.campaign, p.project, SUBSTR(p.datetime_created, 1, 13), p.ok";
        let hours_index: BTreeMap<String, usize> = (0..hours).map(|i| (hour_of(start + i as i64 * HOUR_MICROS), i)).collect();
        for r in self.fetch(results, &[Arg::from(hour_of(start).as_str())]).await? {
            let Some(&i) = hours_index.get(&get_str(&r, 3)?) else { continue };
            let (ok, n) = (get_i64(&r, 4)?, get_i64(&r, 5)?);
            let activity = entry(&mut out, &empty, &r)?;
            match ok {
                1 => activity.results_ok[i] += n,
                _ => activity.results_failed[i] += n,
            }
        }
        Ok(out.into_values().collect())
    }

    /// Compute services registered now (a registration lives while it heartbeats).
    pub async fn console_services_alive(&self) -> Result<i64> {
        get_i64(&self.fetch("SELECT COUNT(*) FROM compute_service", &[]).await?[0], 0)
    }

    /// Claims per compute service since `since` (µs).
    pub async fn console_claims_by_service(&self, since: i64) -> Result<BTreeMap<String, i64>> {
        let rows = self
            .fetch(
                "SELECT service_identifier, COUNT(*) FROM task_claim_log WHERE claimed >= $1 GROUP BY service_identifier",
                &[Arg::I64(since)],
            )
            .await?;
        rows.iter().map(|r| Ok((get_str(r, 0)?, get_i64(r, 1)?))).collect()
    }

    /// Rows of `inner` (whose columns are named `c0`, `c1`, …) aggregated into one JSON
    /// value in the database and decoded here: thousands of rows cost one row's trip
    /// through the driver.
    async fn json_rows<T: serde::de::DeserializeOwned>(&self, columns: usize, inner: &str, args: &[Arg]) -> Result<Vec<T>> {
        let cols = (0..columns).map(|i| format!("q.c{i}")).collect::<Vec<_>>().join(", ");
        let sql = dialect(self.backend, &format!("{} FROM ({inner}) q", json_rows_select(self.backend, &cols)));
        let mut conn = self.reader().acquire().await?;
        fetch_json_rows(&mut conn, &sql, args).await
    }

    /// A network's systems and transformations; None if there is no such network.
    pub async fn console_network_structure(&self, network: &ScopedKey) -> Result<Option<NetworkStructure>> {
        let mut conn = self.reader().acquire().await?;
        let Some(id) = network_row_id(&mut conn, network).await? else { return Ok(None) };
        drop(conn);
        let head = self.fetch("SELECT o.name FROM gufe_object o WHERE o.id = $1", &[Arg::I64(id)]).await?;
        let Some(head) = head.first() else { return Ok(None) };
        let args = [Arg::I64(id)];
        let rows: Vec<(i64, String, String, String, String, Option<String>)> = self
            .json_rows(
                6,
                "SELECT ns.system_id AS c0, o.gufe_key AS c1, o.org AS c2, o.campaign AS c3, o.project AS c4, o.name AS c5 \
                 FROM network_system ns JOIN gufe_object o ON o.id = ns.system_id WHERE ns.network_id = $1",
                &args,
            )
            .await?;
        let mut systems = rows
            .into_iter()
            .map(|(id, k, o, c, p, name)| Ok(SystemNode { id, key: sk_from(&k, &o, &c, &p)?, name }))
            .collect::<Result<Vec<_>>>()?;
        systems.sort_by_key(|s| s.id);
        let rows: Vec<TransformationRow> = self
            .json_rows(
                7,
                "SELECT x.transformation_id AS c0, o.gufe_key AS c1, o.org AS c2, o.campaign AS c3, o.project AS c4, o.name AS c5, \
                 tf.protocol AS c6 FROM network_transformation x JOIN gufe_object o ON o.id = x.transformation_id \
                 JOIN transformation tf ON tf.id = x.transformation_id WHERE x.network_id = $1",
                &args,
            )
            .await?;
        let mut transformations = rows
            .into_iter()
            .map(|(id, k, o, c, p, name, protocol)| {
                Ok(TransformationEdge {
                    id,
                    key: sk_from(&k, &o, &c, &p)?,
                    name,
                    protocol,
                    systems: Vec::new(),
                    ok_results: 0,
                    tasks: StatusCounts::new(),
                    priority: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        transformations.sort_by_key(|t| t.id);
        let mut ends: Vec<(i64, String, i64)> = self
            .json_rows(
                3,
                "SELECT ts.transformation_id AS c0, ts.attribute AS c1, ts.system_id AS c2 FROM network_transformation x \
                 JOIN transformation_system ts ON ts.transformation_id = x.transformation_id WHERE x.network_id = $1",
                &args,
            )
            .await?;
        ends.sort();
        for (tf, _, system) in ends {
            if let Ok(i) = transformations.binary_search_by_key(&tf, |t| t.id) {
                transformations[i].systems.push(system);
            }
        }
        Ok(Some(NetworkStructure { id, key: network.clone(), name: get_opt_str(head, 0)?, systems, transformations }))
    }

    /// The live figures of network `id` (`network` is its key); None if it is gone.
    pub async fn console_network_live(&self, network: &ScopedKey, id: i64) -> Result<Option<NetworkLive>> {
        let head = self.fetch("SELECT n.state, n.weight FROM network n WHERE n.id = $1", &[Arg::I64(id)]).await?;
        let Some(head) = head.first() else { return Ok(None) };
        let args = [Arg::I64(id)];
        let ok_results: Vec<(i64, i64)> = self
            .json_rows(
                2,
                "SELECT x.transformation_id AS c0, tf.ok_results AS c1 FROM network_transformation x \
                 JOIN transformation tf ON tf.id = x.transformation_id WHERE x.network_id = $1 AND tf.ok_results > 0",
                &args,
            )
            .await?;
        let tasks: Vec<(i64, String, i64, i64)> = self
            .json_rows(
                4,
                "SELECT t.transformation_id AS c0, t.status AS c1, COUNT(*) AS c2, MIN(t.priority) AS c3 FROM network_transformation x \
                 JOIN task t ON t.transformation_id = x.transformation_id WHERE x.network_id = $1 GROUP BY t.transformation_id, t.status",
                &args,
            )
            .await?;
        let restart_patterns = self.get_restart_patterns(std::slice::from_ref(network)).await?.pop().unwrap_or_default();
        let strategy = match self.get_strategy_state(network).await? {
            None => None,
            Some(state) => {
                let class = self
                    .fetch(
                        "SELECT o.qualname FROM network_strategy s JOIN gufe_object o ON o.id = s.strategy_id WHERE s.network_id = $1",
                        &[Arg::I64(id)],
                    )
                    .await?
                    .first()
                    .map(|r| get_str(r, 0))
                    .transpose()?
                    .unwrap_or_default();
                Some((class, state))
            }
        };
        Ok(Some(NetworkLive { state: get_str(head, 0)?, weight: get_f64(head, 1)?, ok_results, tasks, restart_patterns, strategy }))
    }

    /// A transformation's tasks (newest first, at most `limit`).
    pub async fn console_transformation_tasks(
        &self,
        transformation: &ScopedKey,
        limit: i64,
    ) -> Result<Option<(Option<String>, Vec<TaskSummary>)>> {
        let head = crate::db::bind_sk(
            sqlx::query(&dialect(
                self.backend,
                "SELECT o.id, o.name FROM gufe_object o JOIN transformation tf ON tf.id = o.id \
                 WHERE o.gufe_key = $1 AND o.org = $2 AND o.campaign = $3 AND o.project = $4",
            )),
            transformation,
        )
        .fetch_optional(self.reader())
        .await?;
        let Some(head) = head else { return Ok(None) };
        let rows = self
            .fetch(
                "SELECT t.gufe_key, t.org, t.campaign, t.project, t.status, t.priority, t.datetime_created, \
                 (SELECT COUNT(*) FROM task_action a WHERE a.task_id = t.id) \
                 FROM task t WHERE t.transformation_id = $1 ORDER BY t.datetime_created DESC, t.id DESC LIMIT $2",
                &[Arg::I64(get_i64(&head, 0)?), Arg::I64(limit)],
            )
            .await?;
        let tasks = rows
            .iter()
            .map(|r| {
                Ok(TaskSummary {
                    key: sk(r, 0)?,
                    status: get_str(r, 4)?,
                    priority: get_i64(r, 5)?,
                    created: get_i64(r, 6)?,
                    actioned_on: get_i64(r, 7)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((get_opt_str(&head, 1)?, tasks)))
    }

    /// The task page's data; None if there is no such task.
    pub async fn console_task(&self, task: &ScopedKey) -> Result<Option<TaskDetail>> {
        if task.qualname() != "Task" {
            return Ok(None);
        }
        let head = crate::db::bind_sk(
            sqlx::query(&dialect(
                self.backend,
                "SELECT t.id, t.status, t.priority, t.datetime_created, t.creator, o.gufe_key, o.org, o.campaign, o.project, o.name, \
                 e.gufe_key, e.org, e.campaign, e.project, \
                 (SELECT cs.identifier FROM task_claim c JOIN compute_service cs ON cs.id = c.service_id WHERE c.task_id = t.id) \
                 FROM task t JOIN gufe_object o ON o.id = t.transformation_id LEFT JOIN task e ON e.id = t.extends_id \
                 WHERE t.gufe_key = $1 AND t.org = $2 AND t.campaign = $3 AND t.project = $4",
            )),
            task,
        )
        .fetch_optional(self.reader())
        .await?;
        let Some(h) = head else { return Ok(None) };
        let id = get_i64(&h, 0)?;
        let extends = match get_opt_str(&h, 10)? {
            Some(_) => Some(sk(&h, 10)?),
            None => None,
        };
        let actioned_on = self
            .fetch(
                "SELECT o.gufe_key, o.org, o.campaign, o.project, o.name, a.weight FROM task_action a JOIN gufe_object o ON o.id = a.network_id \
                 WHERE a.task_id = $1 ORDER BY o.name, o.gufe_key",
                &[Arg::I64(id)],
            )
            .await?
            .iter()
            .map(|r| Ok((sk(r, 0)?, get_opt_str(r, 4)?, get_f64(r, 5)?)))
            .collect::<Result<Vec<_>>>()?;
        let claims = self
            .fetch("SELECT service_identifier, claimed FROM task_claim_log WHERE task_id = $1 ORDER BY claimed", &[Arg::I64(id)])
            .await?
            .iter()
            .map(|r| Ok((get_str(r, 0)?, get_i64(r, 1)?)))
            .collect::<Result<Vec<_>>>()?;
        let status_changes = self
            .fetch(
                "SELECT changed, previous, status, cause FROM task_status_log WHERE task_id = $1 ORDER BY changed, status",
                &[Arg::I64(id)],
            )
            .await?
            .iter()
            .map(|r| Ok((get_i64(r, 0)?, get_str(r, 1)?, get_str(r, 2)?, get_str(r, 3)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut results = Vec::new();
        for r in self
            .fetch(
                "SELECT p.gufe_key, p.org, p.campaign, p.project, p.ok, p.datetime_created, p.creator, p.size, tb.body \
                 FROM task_result tr JOIN pdrr p ON p.id = tr.pdrr_id LEFT JOIN pdrr_tracebacks pt ON pt.pdrr_id = p.id \
                 LEFT JOIN tracebacks tb ON tb.id = pt.tracebacks_id WHERE tr.task_id = $1 ORDER BY p.datetime_created, p.id",
                &[Arg::I64(id)],
            )
            .await?
        {
            let tracebacks = get_opt_str(&r, 8)?
                .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v.get("tracebacks").and_then(|t| t.as_array()).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            results.push(ResultDetail {
                key: sk(&r, 0)?,
                ok: get_i64(&r, 4)? == 1,
                created: get_opt_str(&r, 5)?,
                creator: get_opt_str(&r, 6)?,
                size: get_opt_i64(&r, 7)?,
                tracebacks,
            });
        }
        Ok(Some(TaskDetail {
            key: task.clone(),
            status: get_str(&h, 1)?,
            priority: get_i64(&h, 2)?,
            created: get_i64(&h, 3)?,
            creator: get_opt_str(&h, 4)?,
            transformation: (sk(&h, 5)?, get_opt_str(&h, 9)?),
            extends,
            actioned_on,
            claims,
            claimed_by: get_opt_str(&h, 14)?,
            results,
            status_changes,
        }))
    }
}
