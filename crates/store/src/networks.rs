//! Networks and the gufe objects they carry: submission in one
//! transaction with bulk inserts, and keyed-chain retrieval.

use std::collections::HashMap;

use alchemiscale_model::chain::{chain_json_from_parts, kahn_order, network_info, KeyedChain};
use alchemiscale_model::hash::{md5_hex, network_mark_key, taskhub_key};
use alchemiscale_model::{GufeKey, NetworkState, Scope, ScopedKey};
use sqlx::AnyConnection;

use crate::db::{fetch_in_chunks, get_i64, get_str, insert_rows, Arg};
use crate::error::{Result, StoreError};
use crate::{Backend, Store};

/// What a network submission produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedNetwork {
    pub network: ScopedKey,
    pub taskhub: ScopedKey,
    pub mark: ScopedKey,
    /// False if the network already existed in that scope (then nothing changed).
    pub created: bool,
}

fn sk(key: &GufeKey, scope: &Scope) -> ScopedKey {
    ScopedKey::new(key.clone(), scope.clone()).expect("specific scope")
}

fn scope_args(scope: &Scope) -> [Arg; 3] {
    [
        Arg::from(scope.org().unwrap_or_default()),
        Arg::from(scope.campaign().unwrap_or_default()),
        Arg::from(scope.project().unwrap_or_default()),
    ]
}

/// Row id of the gufe object stored under `sk`.
pub(crate) async fn object_id(conn: &mut AnyConnection, sk: &ScopedKey) -> Result<Option<i64>> {
    let row = crate::db::bind_sk(
        sqlx::query("SELECT id FROM gufe_object WHERE gufe_key = $1 AND org = $2 AND campaign = $3 AND project = $4"),
        sk,
    )
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| get_i64(&r, 0)).transpose()
}

/// Row id of the network whose TaskHub (or NetworkMark) token and scope are given.
pub(crate) async fn network_id_by_token(conn: &mut AnyConnection, token: &str, scope: &Scope) -> Result<Option<i64>> {
    let row = sqlx::query(
        "SELECT n.id FROM network n JOIN gufe_object o ON o.id = n.id \
         WHERE n.taskhub_token = $1 AND o.org = $2 AND o.campaign = $3 AND o.project = $4",
    )
    .bind(token)
    .bind(scope.org().unwrap_or_default())
    .bind(scope.campaign().unwrap_or_default())
    .bind(scope.project().unwrap_or_default())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| get_i64(&r, 0)).transpose()
}

impl Store {
    /// Store a network and every object of its chain in `scope`, with its TaskHub
    /// (weight 0.5) and NetworkMark (`state`), atomically.
    ///
    /// Resubmitting a network that exists in `scope` changes nothing and returns the same
    /// keys: unlike upstream the hub weight and network state are kept.
    /// An object already stored under the same ScopedKey is kept as stored (content under
    /// a ScopedKey never changes; clients cache by it).
    pub async fn create_network(&self, chain: &KeyedChain, scope: &Scope, state: NetworkState) -> Result<CreatedNetwork> {
        if !scope.is_specific() {
            return Err(StoreError::Invalid(format!(
                "scope '{scope}' is not specific: networks can only be stored in scopes without wildcards"
            )));
        }
        let info = network_info(chain)?;
        let network_sk = sk(&info.key, scope);
        let hub_sk = sk(&taskhub_key(&network_sk), scope);
        let mark_sk = sk(&network_mark_key(&network_sk), scope);
        let token = md5_hex(network_sk.to_string().as_bytes());

        let mut tx = self.begin_write().await?;
        let ids = insert_chain_objects(&mut tx, self.backend, chain, scope).await?;
        let id = |k: &GufeKey| -> Result<i64> {
            ids.get(k.as_str()).copied().ok_or_else(|| StoreError::Invalid(format!("object {k} vanished during submission")))
        };

        let network_id = id(&info.key)?;
        let inserted =
            sqlx::query("INSERT INTO network (id, taskhub_token, state, weight) VALUES ($1, $2, $3, 0.5) ON CONFLICT (id) DO NOTHING")
                .bind(network_id)
                .bind(token.as_str())
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if inserted == 0 {
            tx.commit().await?;
            return Ok(CreatedNetwork { network: network_sk, taskhub: hub_sk, mark: mark_sk, created: false });
        }

        let mut tf_rows = Vec::with_capacity(info.edges.len());
        let mut tf_systems = Vec::new();
        let mut net_tfs = Vec::with_capacity(info.edges.len());
        for e in &info.edges {
            let tid = id(&e.key)?;
            tf_rows.push(vec![Arg::I64(tid), Arg::from(e.protocol.clone())]);
            for (attr, cs) in &e.systems {
                tf_systems.push(vec![Arg::I64(tid), Arg::from(attr.as_str()), Arg::I64(id(cs)?)]);
            }
            net_tfs.push(vec![Arg::I64(network_id), Arg::I64(tid)]);
        }
        insert_rows(&mut tx, self.backend, "INSERT INTO transformation (id, protocol)", "ON CONFLICT DO NOTHING", 2, &tf_rows).await?;
        insert_rows(
            &mut tx,
            self.backend,
            "INSERT INTO transformation_system (transformation_id, attribute, system_id)",
            "ON CONFLICT DO NOTHING",
            3,
            &tf_systems,
        )
        .await?;
        insert_rows(
            &mut tx,
            self.backend,
            "INSERT INTO network_transformation (network_id, transformation_id)",
            "ON CONFLICT DO NOTHING",
            2,
            &net_tfs,
        )
        .await?;
        let net_systems: Vec<Vec<Arg>> =
            info.nodes.iter().map(|n| Ok(vec![Arg::I64(network_id), Arg::I64(id(n)?)])).collect::<Result<_>>()?;
        insert_rows(&mut tx, self.backend, "INSERT INTO network_system (network_id, system_id)", "ON CONFLICT DO NOTHING", 2, &net_systems)
            .await?;
        let members: Vec<Vec<Arg>> = chain
            .entries()
            .iter()
            .enumerate()
            .map(|(pos, e)| Ok(vec![Arg::I64(network_id), Arg::I64(pos as i64), Arg::I64(id(&e.key)?)]))
            .collect::<Result<_>>()?;
        insert_rows(&mut tx, self.backend, "INSERT INTO network_member (network_id, position, object_id)", "", 3, &members).await?;
        tx.commit().await?;
        Ok(CreatedNetwork { network: network_sk, taskhub: hub_sk, mark: mark_sk, created: true })
    }

    /// The keyed chain (JSON text) of the gufe object stored under `sk`.
    ///
    /// A network comes back exactly as submitted (same order, CPython `json.dumps`
    /// formatting, so a chain submitted by the Python client is returned byte for byte).
    /// Any other object is rebuilt from its references in dependency order, ties broken
    /// by the smallest gufe key (upstream's store read order).
    pub async fn get_chain(&self, sk: &ScopedKey) -> Result<String> {
        let mut conn = self.reader().acquire().await?;
        let id = object_id(&mut conn, sk).await?.ok_or(StoreError::NotFound)?;
        let rows = sqlx::query(
            "SELECT o.gufe_key, o.body FROM network_member m JOIN gufe_object o ON o.id = m.object_id \
             WHERE m.network_id = $1 ORDER BY m.position",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        if !rows.is_empty() {
            let parts: Vec<(String, String)> = rows.iter().map(|r| Ok((get_str(r, 0)?, get_str(r, 1)?))).collect::<Result<_>>()?;
            return Ok(chain_json_from_parts(parts.iter().map(|(k, d)| (k.as_str(), d.as_str()))));
        }
        object_chain(&mut conn, id).await
    }
}

/// Store every object of `chain` in `scope` (objects already stored under the same
/// ScopedKey are kept as they are) with their reference edges; returns row ids by gufe key.
pub(crate) async fn insert_chain_objects(
    conn: &mut AnyConnection,
    backend: Backend,
    chain: &KeyedChain,
    scope: &Scope,
) -> Result<HashMap<String, i64>> {
    let [org, campaign, project] = scope_args(scope);
    let object_rows: Vec<Vec<Arg>> = chain
        .entries()
        .iter()
        .map(|e| {
            vec![
                Arg::from(e.key.as_str()),
                org.clone(),
                campaign.clone(),
                project.clone(),
                Arg::from(e.qualname()),
                Arg::from(e.module()),
                Arg::from(e.name()),
                Arg::Text(e.dict_json()),
            ]
        })
        .collect();
    let key_args: Vec<Arg> = chain.entries().iter().map(|e| Arg::from(e.key.as_str())).collect();
    let inserted = insert_rows(
        conn,
        backend,
        "INSERT INTO gufe_object (gufe_key, org, campaign, project, qualname, module, name, body)",
        "ON CONFLICT (gufe_key, org, campaign, project) DO NOTHING",
        8,
        &object_rows,
    )
    .await?;
    let rows = fetch_in_chunks(
        conn,
        backend,
        "SELECT id, gufe_key FROM gufe_object WHERE org = $1 AND campaign = $2 AND project = $3 AND gufe_key IN ({})",
        &[org, campaign, project],
        &key_args,
    )
    .await?;
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        ids.insert(get_str(r, 1)?, get_i64(r, 0)?);
    }
    if inserted > 0 {
        let id = |k: &str| ids.get(k).copied().ok_or_else(|| StoreError::Invalid(format!("object {k} vanished during submission")));
        let mut refs: Vec<Vec<Arg>> = Vec::new();
        for e in chain.entries() {
            let parent = id(e.key.as_str())?;
            let mut children: Vec<i64> = e.references().into_iter().map(id).collect::<Result<_>>()?;
            children.sort_unstable();
            children.dedup();
            refs.extend(children.into_iter().map(|c| vec![Arg::I64(parent), Arg::I64(c)]));
        }
        insert_rows(conn, backend, "INSERT INTO gufe_ref (parent_id, child_id)", "ON CONFLICT DO NOTHING", 2, &refs).await?;
    }
    Ok(ids)
}

/// Rebuild the keyed chain of object `root_id` from the reference graph.
pub(crate) async fn object_chain(conn: &mut AnyConnection, root_id: i64) -> Result<String> {
    const REACH: &str = "WITH RECURSIVE reach(id) AS (SELECT CAST($1 AS BIGINT) UNION SELECT r.child_id FROM gufe_ref r JOIN reach ON r.parent_id = reach.id)";
    let objects = sqlx::query(&format!("{REACH} SELECT o.id, o.gufe_key, o.body FROM reach JOIN gufe_object o ON o.id = reach.id"))
        .bind(root_id)
        .fetch_all(&mut *conn)
        .await?;
    let edges = sqlx::query(&format!("{REACH} SELECT r.parent_id, r.child_id FROM gufe_ref r JOIN reach ON r.parent_id = reach.id"))
        .bind(root_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(objects.len());
    let mut keys = Vec::with_capacity(objects.len());
    let mut bodies = Vec::with_capacity(objects.len());
    for (i, r) in objects.iter().enumerate() {
        index.insert(get_i64(r, 0)?, i);
        keys.push(get_str(r, 1)?);
        bodies.push(get_str(r, 2)?);
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    for e in &edges {
        if let (Some(&p), Some(&c)) = (index.get(&get_i64(e, 0)?), index.get(&get_i64(e, 1)?)) {
            deps[p].push(c);
        }
    }
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let order = kahn_order(&key_refs, &deps).ok_or_else(|| StoreError::Invalid("stored object graph has a cycle".into()))?;
    Ok(chain_json_from_parts(order.into_iter().map(|i| (keys[i].as_str(), bodies[i].as_str()))))
}
