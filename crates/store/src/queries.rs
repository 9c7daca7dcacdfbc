//! Read models: queries over scopes, relationship listings, status
//! summaries, actioned-task listings; network state and TaskHub weights;
//! existence checks.

use std::collections::BTreeMap;

use alchemiscale_model::{NetworkState, Scope, ScopedKey, TaskStatus};
use fancy_regex::Regex;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use crate::db::{bind, dialect, get_f64, get_i64, get_opt_str, get_str, Arg};
use crate::error::{Result, StoreError};
use crate::networks::{network_id_by_token, object_id};
use crate::tasks::{load_task, network_row_id};
use crate::Store;

/// Status counts: `{status: n}` with only non-zero statuses.
pub type StatusCounts = BTreeMap<String, i64>;

pub(crate) fn sk_from(gufe_key: &str, org: &str, campaign: &str, project: &str) -> Result<ScopedKey> {
    format!("{gufe_key}-{org}-{campaign}-{project}").parse().map_err(|_| StoreError::Invalid(format!("corrupt key {gufe_key} in store")))
}

/// Rows whose first four columns are gufe_key, org, campaign, project.
fn sks(rows: &[AnyRow]) -> Result<Vec<ScopedKey>> {
    rows.iter().map(|r| sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)).collect()
}

pub(crate) async fn object_sk(conn: &mut AnyConnection, id: i64) -> Result<ScopedKey> {
    let row = sqlx::query("SELECT gufe_key, org, campaign, project FROM gufe_object WHERE id = $1").bind(id).fetch_one(&mut *conn).await?;
    sk_from(&get_str(&row, 0)?, &get_str(&row, 1)?, &get_str(&row, 2)?, &get_str(&row, 3)?)
}

/// `alias.org = $n AND …` for the concrete components of `scope`, numbering from `next`.
pub(crate) fn scope_condition(alias: &str, scope: &Scope, args: &mut Vec<Arg>) -> String {
    let mut parts = vec!["1 = 1".to_string()];
    for (col, value) in [("org", scope.org()), ("campaign", scope.campaign()), ("project", scope.project())] {
        if let Some(v) = value {
            args.push(Arg::from(v));
            parts.push(format!("{alias}.{col} = ${}", args.len()));
        }
    }
    parts.join(" AND ")
}

fn full_match(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| StoreError::Invalid(format!("invalid regular expression {pattern:?}: {e}")))
}

fn counts(rows: &[AnyRow]) -> Result<StatusCounts> {
    let mut out = StatusCounts::new();
    for r in rows {
        let n = get_i64(r, 1)?;
        if n > 0 {
            out.insert(get_str(r, 0)?, n);
        }
    }
    Ok(out)
}

const SK_COLS: &str = "o.gufe_key, o.org, o.campaign, o.project";
const TASK_SK_COLS: &str = "t.gufe_key, t.org, t.campaign, t.project";

impl Store {
    pub(crate) async fn fetch(&self, sql: &str, args: &[Arg]) -> Result<Vec<AnyRow>> {
        let sql = dialect(self.backend, sql);
        Ok(bind(sqlx::query(&sql), args).fetch_all(self.reader()).await?)
    }

    async fn id_of(&self, sk: &ScopedKey) -> Result<Option<i64>> {
        let mut conn = self.reader().acquire().await?;
        object_id(&mut conn, sk).await
    }

    /// Networks in the given (disjoint) scopes whose name and state fully match the
    /// regular expressions (None = no filter; a null name never matches a name filter).
    /// Sorted by ScopedKey within each scope.
    pub async fn query_networks(&self, scopes: &[Scope], name: Option<&str>, state: Option<&str>) -> Result<Vec<ScopedKey>> {
        let name_re = name.map(full_match).transpose()?;
        let state_re = state.map(full_match).transpose()?;
        let mut out = Vec::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("o", scope, &mut args);
            let rows = self
                .fetch(&format!("SELECT {SK_COLS}, o.name, n.state FROM network n JOIN gufe_object o ON o.id = n.id WHERE {cond}"), &args)
                .await?;
            let mut found = Vec::new();
            for r in &rows {
                let n = get_opt_str(r, 4)?;
                let st = get_str(r, 5)?;
                let name_ok = match (&name_re, &n) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(re), Some(n)) => re.is_match(n).unwrap_or(false),
                };
                let state_ok = state_re.as_ref().is_none_or(|re| re.is_match(&st).unwrap_or(false));
                if name_ok && state_ok {
                    found.push(sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)?);
                }
            }
            found.sort();
            out.extend(found);
        }
        Ok(out)
    }

    /// Transformations (or chemical systems, with `chemical_systems`) in the given scopes,
    /// optionally with exactly this name; ordered by org, campaign, project, gufe key.
    pub async fn query_objects(&self, scopes: &[Scope], chemical_systems: bool, name: Option<&str>) -> Result<Vec<ScopedKey>> {
        let mut out = Vec::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("o", scope, &mut args);
            let class = if chemical_systems {
                "o.qualname = 'ChemicalSystem'".to_string()
            } else {
                "o.id IN (SELECT id FROM transformation)".to_string()
            };
            let name_cond = match name {
                Some(n) => {
                    args.push(Arg::from(n));
                    format!("AND o.name = ${}", args.len())
                }
                None => String::new(),
            };
            let rows = self
                .fetch(&format!("SELECT {SK_COLS} FROM gufe_object o WHERE {cond} AND {class} {name_cond} ORDER BY o.org, o.campaign, o.project, o.gufe_key"), &args)
                .await?;
            out.extend(sks(&rows)?);
        }
        Ok(out)
    }

    /// Tasks in the given scopes, optionally with exactly this status string.
    pub async fn query_tasks(&self, scopes: &[Scope], status: Option<&str>) -> Result<Vec<ScopedKey>> {
        let mut out = Vec::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("t", scope, &mut args);
            let status_cond = match status {
                Some(s) => {
                    args.push(Arg::from(s));
                    format!("AND t.status = ${}", args.len())
                }
                None => String::new(),
            };
            let rows = self
                .fetch(
                    &format!(
                        "SELECT {TASK_SK_COLS} FROM task t WHERE {cond} {status_cond} ORDER BY t.org, t.campaign, t.project, t.gufe_key"
                    ),
                    &args,
                )
                .await?;
            out.extend(sks(&rows)?);
        }
        Ok(out)
    }

    /// TaskHubs of the networks in the given scopes, with their network and weight, ordered
    /// by org, campaign, project, hub key.
    pub async fn query_taskhubs(&self, scopes: &[Scope]) -> Result<Vec<(ScopedKey, ScopedKey, f64)>> {
        let mut out = Vec::new();
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("o", scope, &mut args);
            let rows = self
                .fetch(
                    &format!("SELECT {SK_COLS}, n.taskhub_token, n.weight FROM network n JOIN gufe_object o ON o.id = n.id WHERE {cond} ORDER BY o.org, o.campaign, o.project, n.taskhub_token"),
                    &args,
                )
                .await?;
            for r in &rows {
                let net = sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)?;
                let hub = sk_from(&format!("TaskHub-{}", get_str(r, 4)?), net.org(), net.campaign(), net.project())?;
                out.push((hub, net, get_f64(r, 5)?));
            }
        }
        Ok(out)
    }

    /// Transformations that are edges of the network.
    pub async fn network_transformations(&self, network: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(network).await? else { return Ok(vec![]) };
        sks(&self.fetch(&format!("SELECT {SK_COLS} FROM network_transformation x JOIN gufe_object o ON o.id = x.transformation_id WHERE x.network_id = $1"), &[Arg::I64(id)]).await?)
    }

    /// Networks having this transformation as an edge.
    pub async fn transformation_networks(&self, transformation: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(transformation).await? else { return Ok(vec![]) };
        sks(&self.fetch(&format!("SELECT {SK_COLS} FROM network_transformation x JOIN gufe_object o ON o.id = x.network_id WHERE x.transformation_id = $1"), &[Arg::I64(id)]).await?)
    }

    /// Chemical systems that are nodes of the network.
    pub async fn network_chemicalsystems(&self, network: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(network).await? else { return Ok(vec![]) };
        sks(&self
            .fetch(
                &format!("SELECT {SK_COLS} FROM network_system x JOIN gufe_object o ON o.id = x.system_id WHERE x.network_id = $1"),
                &[Arg::I64(id)],
            )
            .await?)
    }

    /// Networks having this chemical system as a node.
    pub async fn chemicalsystem_networks(&self, system: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(system).await? else { return Ok(vec![]) };
        sks(&self
            .fetch(
                &format!("SELECT {SK_COLS} FROM network_system x JOIN gufe_object o ON o.id = x.network_id WHERE x.system_id = $1"),
                &[Arg::I64(id)],
            )
            .await?)
    }

    /// End states of a transformation, ordered by attribute name (stateA, stateB / system).
    pub async fn transformation_chemicalsystems(&self, transformation: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(transformation).await? else { return Ok(vec![]) };
        sks(&self
            .fetch(&format!("SELECT {SK_COLS} FROM transformation_system x JOIN gufe_object o ON o.id = x.system_id WHERE x.transformation_id = $1 ORDER BY x.attribute"), &[Arg::I64(id)])
            .await?)
    }

    /// Transformations using this chemical system as an end state.
    pub async fn chemicalsystem_transformations(&self, system: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(system).await? else { return Ok(vec![]) };
        sks(&self
            .fetch(
                &format!("SELECT DISTINCT {SK_COLS} FROM transformation_system x JOIN gufe_object o ON o.id = x.transformation_id WHERE x.system_id = $1"),
                &[Arg::I64(id)],
            )
            .await?)
    }

    /// Tasks performing any transformation of the network, optionally of one status.
    pub async fn network_tasks(&self, network: &ScopedKey, status: Option<TaskStatus>) -> Result<Vec<ScopedKey>> {
        let Some(id) = self.id_of(network).await? else { return Ok(vec![]) };
        let mut args = vec![Arg::I64(id)];
        let cond = match status {
            Some(s) => {
                args.push(Arg::from(s.as_str()));
                "AND t.status = $2"
            }
            None => "",
        };
        sks(&self
            .fetch(&format!("SELECT {TASK_SK_COLS} FROM task t JOIN network_transformation x ON x.transformation_id = t.transformation_id WHERE x.network_id = $1 {cond}"), &args)
            .await?)
    }

    /// Networks containing the task's transformation.
    pub async fn task_networks(&self, task: &ScopedKey) -> Result<Vec<ScopedKey>> {
        let mut conn = self.reader().acquire().await?;
        let Some(t) = load_task(&mut conn, task).await? else { return Ok(vec![]) };
        drop(conn);
        sks(&self
            .fetch(&format!("SELECT {SK_COLS} FROM network_transformation x JOIN gufe_object o ON o.id = x.network_id WHERE x.transformation_id = $1"), &[Arg::I64(t.transformation_id)])
            .await?)
    }

    /// Tasks of a transformation with the task each extends, optionally only the
    /// (transitive) descendants of `extends` and/or one status.
    pub async fn transformation_tasks(
        &self,
        transformation: &ScopedKey,
        extends: Option<&ScopedKey>,
        status: Option<TaskStatus>,
    ) -> Result<Vec<(ScopedKey, Option<ScopedKey>)>> {
        let Some(tf) = self.id_of(transformation).await? else { return Ok(vec![]) };
        let mut args = vec![Arg::I64(tf)];
        let mut cond = String::new();
        if let Some(s) = status {
            args.push(Arg::from(s.as_str()));
            cond.push_str(&format!(" AND t.status = ${}", args.len()));
        }
        let sql = match extends {
            None => format!(
                "SELECT {TASK_SK_COLS}, p.gufe_key, p.org, p.campaign, p.project FROM task t LEFT JOIN task p ON p.id = t.extends_id \
                 WHERE t.transformation_id = $1{cond}"
            ),
            Some(e) => {
                let mut conn = self.reader().acquire().await?;
                let Some(root) = load_task(&mut conn, e).await? else { return Ok(vec![]) };
                args.push(Arg::I64(root.id));
                format!(
                    "WITH RECURSIVE d(id) AS (SELECT id FROM task WHERE extends_id = ${n} UNION SELECT x.id FROM task x JOIN d ON x.extends_id = d.id) \
                     SELECT {TASK_SK_COLS}, p.gufe_key, p.org, p.campaign, p.project FROM task t JOIN d ON d.id = t.id LEFT JOIN task p ON p.id = t.extends_id \
                     WHERE t.transformation_id = $1{cond}",
                    n = args.len()
                )
            }
        };
        let rows = self.fetch(&sql, &args).await?;
        rows.iter()
            .map(|r| {
                let t = sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)?;
                let p = match get_opt_str(r, 4)? {
                    Some(k) => Some(sk_from(&k, &get_str(r, 5)?, &get_str(r, 6)?, &get_str(r, 7)?)?),
                    None => None,
                };
                Ok((t, p))
            })
            .collect()
    }

    /// Status counts over the tasks of each network (network state ignored).
    pub async fn network_status(&self, networks: &[ScopedKey]) -> Result<Vec<StatusCounts>> {
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            match self.id_of(n).await? {
                None => out.push(StatusCounts::new()),
                Some(id) => out.push(counts(
                    &self
                        .fetch(
                            "SELECT t.status, COUNT(*) FROM task t JOIN network_transformation x ON x.transformation_id = t.transformation_id \
                             WHERE x.network_id = $1 GROUP BY t.status",
                            &[Arg::I64(id)],
                        )
                        .await?,
                )?),
            }
        }
        Ok(out)
    }

    /// Status counts over the tasks of a transformation.
    pub async fn transformation_status(&self, transformation: &ScopedKey) -> Result<StatusCounts> {
        let Some(id) = self.id_of(transformation).await? else { return Ok(StatusCounts::new()) };
        counts(&self.fetch("SELECT status, COUNT(*) FROM task WHERE transformation_id = $1 GROUP BY status", &[Arg::I64(id)]).await?)
    }

    /// Status counts of distinct tasks in the scopes whose transformation belongs to at
    /// least one network whose state fully matches `network_state` (None = any state).
    pub async fn scope_status(&self, scopes: &[Scope], network_state: Option<&str>) -> Result<StatusCounts> {
        let states: Vec<&str> = match network_state {
            None => NetworkState::ALL.iter().map(|s| s.as_str()).collect(),
            Some(p) => {
                let re = full_match(p)?;
                NetworkState::ALL.iter().map(|s| s.as_str()).filter(|s| re.is_match(s).unwrap_or(false)).collect()
            }
        };
        let mut total = StatusCounts::new();
        if states.is_empty() {
            return Ok(total);
        }
        for scope in scopes {
            let mut args = Vec::new();
            let cond = scope_condition("t", scope, &mut args);
            let first = args.len() + 1;
            let list = (0..states.len()).map(|i| format!("${}", first + i)).collect::<Vec<_>>().join(", ");
            args.extend(states.iter().map(|s| Arg::from(*s)));
            let rows = self
                .fetch(
                    &format!(
                        "SELECT t.status, COUNT(*) FROM task t WHERE {cond} AND EXISTS (SELECT 1 FROM network_transformation x JOIN network n ON n.id = x.network_id \
                         WHERE x.transformation_id = t.transformation_id AND n.state IN ({list})) GROUP BY t.status"
                    ),
                    &args,
                )
                .await?;
            for (k, v) in counts(&rows)? {
                *total.entry(k).or_default() += v;
            }
        }
        Ok(total)
    }

    /// Tasks actioned on the network's hub with their ACTIONS weights.
    pub async fn network_actioned_tasks(&self, network: &ScopedKey) -> Result<Vec<(ScopedKey, f64)>> {
        let Some(id) = self.id_of(network).await? else { return Ok(vec![]) };
        let rows = self
            .fetch(
                &format!("SELECT {TASK_SK_COLS}, a.weight FROM task_action a JOIN task t ON t.id = a.task_id WHERE a.network_id = $1"),
                &[Arg::I64(id)],
            )
            .await?;
        rows.iter().map(|r| Ok((sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)?, get_f64(r, 4)?))).collect()
    }

    /// Networks whose hub actions the task, with the task's weight there.
    pub async fn task_actioned_networks(&self, task: &ScopedKey) -> Result<Vec<(ScopedKey, f64)>> {
        let mut conn = self.reader().acquire().await?;
        let Some(t) = load_task(&mut conn, task).await? else { return Ok(vec![]) };
        drop(conn);
        let rows = self
            .fetch(
                &format!("SELECT {SK_COLS}, a.weight FROM task_action a JOIN gufe_object o ON o.id = a.network_id WHERE a.task_id = $1"),
                &[Arg::I64(t.id)],
            )
            .await?;
        rows.iter().map(|r| Ok((sk_from(&get_str(r, 0)?, &get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?)?, get_f64(r, 4)?))).collect()
    }

    /// Network states per input (None for unknown networks).
    pub async fn get_network_states(&self, networks: &[ScopedKey]) -> Result<Vec<Option<NetworkState>>> {
        let mut conn = self.reader().acquire().await?;
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            let state = match network_row_id(&mut conn, n).await? {
                None => None,
                Some(id) => {
                    let row = sqlx::query("SELECT state FROM network WHERE id = $1").bind(id).fetch_one(&mut *conn).await?;
                    Some(get_str(&row, 0)?.parse().map_err(|_| StoreError::Invalid("corrupt network state".into()))?)
                }
            };
            out.push(state);
        }
        Ok(out)
    }

    /// Set network states in one transaction; per input the key, or None if unknown.
    pub async fn set_network_states(&self, changes: &[(ScopedKey, NetworkState)]) -> Result<Vec<Option<ScopedKey>>> {
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(changes.len());
        for (n, s) in changes {
            match network_row_id(&mut tx, n).await? {
                None => out.push(None),
                Some(id) => {
                    sqlx::query("UPDATE network SET state = $1 WHERE id = $2").bind(s.as_str()).bind(id).execute(&mut *tx).await?;
                    out.push(Some(n.clone()));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// TaskHub weights per input (None for unknown networks).
    pub async fn get_network_weights(&self, networks: &[ScopedKey]) -> Result<Vec<Option<f64>>> {
        let mut conn = self.reader().acquire().await?;
        let mut out = Vec::with_capacity(networks.len());
        for n in networks {
            out.push(match network_row_id(&mut conn, n).await? {
                None => None,
                Some(id) => {
                    Some(get_f64(&sqlx::query("SELECT weight FROM network WHERE id = $1").bind(id).fetch_one(&mut *conn).await?, 0)?)
                }
            });
        }
        Ok(out)
    }

    /// Set TaskHub weights (each in [0, 1]) in one transaction; per input the key or None.
    pub async fn set_network_weights(&self, changes: &[(ScopedKey, f64)]) -> Result<Vec<Option<ScopedKey>>> {
        if changes.iter().any(|(_, w)| !(0.0..=1.0).contains(w)) {
            return Err(StoreError::Invalid("all `weights` must be between 0 and 1 (inclusive)".into()));
        }
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(changes.len());
        for (n, w) in changes {
            match network_row_id(&mut tx, n).await? {
                None => out.push(None),
                Some(id) => {
                    sqlx::query("UPDATE network SET weight = $1 WHERE id = $2").bind(*w).bind(id).execute(&mut *tx).await?;
                    out.push(Some(n.clone()));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Is an object stored under exactly this ScopedKey (any class)?
    pub async fn exists(&self, sk: &ScopedKey) -> Result<bool> {
        let mut conn = self.reader().acquire().await?;
        let scoped = |table: &str| format!("SELECT 1 FROM {table} WHERE gufe_key = $1 AND org = $2 AND campaign = $3 AND project = $4");
        let sql = match sk.qualname() {
            "Task" => scoped("task"),
            "ProtocolDAGResultRef" => scoped("pdrr"),
            "Tracebacks" => scoped("tracebacks"),
            "TaskHub" | "NetworkMark" => return Ok(network_id_by_token(&mut conn, sk.gufe_key().token(), sk.scope()).await?.is_some()),
            "TaskRestartPattern" => "SELECT 1 FROM restart_pattern r JOIN gufe_object o ON o.id = r.network_id \
                                     WHERE r.gufe_key = $1 AND o.org = $2 AND o.campaign = $3 AND o.project = $4"
                .to_string(),
            _ => scoped("gufe_object"),
        };
        let row = crate::db::bind_sk(sqlx::query(&sql), sk).fetch_optional(&mut *conn).await?;
        Ok(row.is_some())
    }
}
