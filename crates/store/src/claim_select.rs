//! Selecting a hub's first claimable tasks, in claim order, inside a claim transaction —
//! and, on PostgreSQL, where that select starts reading the claim queue.
//!
//! # The claim queue's graveyard (PostgreSQL)
//!
//! A claim reads the hub's rows of the claim queue through `task_queue_order` (the index of
//! the queue table, in (priority, claim rank) order; see `claim_rank`) from the first
//! one. Claiming a task deletes its queue row, but PostgreSQL leaves the index entry in
//! place until VACUUM removes it; the scan that meets it marks it
//! dead, and later scans skip it without visiting the table, but still read its page.
//! Claims take the front of the queue, and tasks that come back or are newly actioned are
//! ranked from the group's current time onwards, so the front of the index becomes a run of
//! pages holding nothing but dead entries, as long as the claims made since the last
//! VACUUM. Autovacuum visits a table after a fifth of its rows have changed: every 2,000
//! claims with 10,000 tasks, every 200,000 with 1,000,000. Measured on a 1,000,000-task
//! store, a claim select read 50–250 index pages, almost all of them dead, and that walk
//! was most of the select's cost and the larger part of why claims slowed as the store grew.
//!
//! So each process keeps, per hub and protocol filter, a *start hint*: the (priority, rank)
//! of the first row its last select from that hub returned, for [`START_HINT_TTL`]. A
//! select with a fresh hint starts there (`(q.priority, q.claim_rank) >= hint`, a bound the
//! index scan descends to). The hint is only where to start, never a reason to hand out less:
//! a hinted select that finds fewer tasks than wanted is followed by one from the start of
//! the queue before the hub counts as drained, and every condition of a claim is checked as
//! always. Rows ranked below a hint are rows that were not claimable when the hint was
//! taken (a task waiting for the task it extends, a row another claimer held); should one
//! become claimable, it waits at most [`START_HINT_TTL`] longer. Rows that enter the queue
//! — re-weighted, returned — are ranked from their group's time, which is at or after the
//! rank of the last row claimed, so at or after the hint. Actioning tasks and changing
//! priorities can put rows in a more urgent priority group, before the hint: the process
//! that does it forgets its hints; other processes (several API instances on one database)
//! take such rows within [`START_HINT_TTL`].
//!
//! SQLite deletes index entries with their rows: it has no graveyard and uses no hint.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_model::ScopedKey;
use sqlx::AnyConnection;

use crate::claims::claimable_condition;
use crate::db::{dialect, get_f64, get_i64, get_str};
use crate::error::Result;
use crate::tasks::task_sk;
use crate::{Backend, Store};

/// How long a start hint is trusted before a select reads the hub's queue from its start
/// again.
pub const START_HINT_TTL: Duration = Duration::from_secs(1);

/// Most hints kept at once; beyond that stale ones are dropped, then all.
const MAX_HINTS: usize = 4096;

/// (priority, claim rank) of a row of the claim queue.
pub(crate) type Position = (i64, f64);

struct Hint {
    taken: Instant,
    at: Position,
}

static START_HINTS: LazyLock<Mutex<HashMap<String, Hint>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn hints() -> std::sync::MutexGuard<'static, HashMap<String, Hint>> {
    // a panic while holding the lock cannot leave a hint inconsistent: use it anyway
    START_HINTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn hint_key(scope: &str, hub: i64, protocols: Option<&str>) -> String {
    format!("{scope}|{hub}|{}", protocols.unwrap_or("*"))
}

fn hint_get(key: &str) -> Option<Position> {
    hints().get(key).filter(|h| h.taken.elapsed() <= START_HINT_TTL).map(|h| h.at)
}

/// Forget the start hints of `store`: after this process actioned tasks or changed
/// priorities in it, which may place claimable tasks before a hint (a task of a more urgent
/// priority group). Other stores' hints stay.
pub(crate) fn forget_start_hints(store: &Store) {
    if let Some(scope) = hint_scope(store) {
        let prefix = format!("{scope}|");
        hints().retain(|key, _| !key.starts_with(&prefix));
    }
}

/// The start hint this process holds for a hub of `store` (no protocol filter), however
/// old: what `claim_plan` explains a hinted select from.
pub(crate) fn held_hint(store: &Store, hub: i64) -> Option<Position> {
    let key = hint_key(&hint_scope(store)?, hub, None);
    hints().get(&key).map(|h| h.at)
}

fn hint_set(key: &str, at: Option<Position>) {
    let mut map = hints();
    let Some(at) = at else {
        map.remove(key);
        return;
    };
    insert_bounded(&mut map, key, Hint { taken: Instant::now(), at }, MAX_HINTS, |h| h.taken.elapsed() > START_HINT_TTL);
}

/// Insert into a process-wide map of hints (start hints, hub pools) that keeps at most
/// `max` keys: when a new key finds it full, its stale entries go, then, if that was not
/// enough, all of them.
pub(crate) fn insert_bounded<V>(map: &mut HashMap<String, V>, key: &str, value: V, max: usize, stale: impl Fn(&V) -> bool) {
    if map.len() >= max && !map.contains_key(key) {
        map.retain(|_, v| !stale(v));
        if map.len() >= max {
            map.clear();
        }
    }
    map.insert(key.to_string(), value);
}

/// One selected (and, once recorded, claimed) task.
pub(crate) struct Claimed {
    pub(crate) id: i64,
    pub(crate) sk: ScopedKey,
    /// The queue row the select read it from.
    pub(crate) row: QueueRowRead,
}

/// A queue row as a claim's select read it: its key, and whether the task may have queue
/// rows on other hubs too (`shared`). On SQLite that is whether the task's transformation
/// belongs to another network: only then can the task have ACTIONS rows, and so queue rows,
/// on other hubs (a task is actioned only on hubs whose network holds its transformation,
/// and networks never change), so a claim of an unshared task takes it out of the queue by
/// this key alone (see `claim_rank::leave_queue_claimed`). On PostgreSQL, which finds a
/// task's queue rows through its index by task at no extra cost, every row counts as
/// shared and the select does not ask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueRowRead {
    pub(crate) hub: i64,
    pub(crate) priority: i64,
    pub(crate) rank: f64,
    pub(crate) shared: bool,
}

/// The scope of a store's start hints for [`select_from_hubs`]: on PostgreSQL the store's
/// identity (hints are kept per store, hub and protocol filter); None on SQLite, which
/// always reads from the start.
pub(crate) fn hint_scope(store: &Store) -> Option<String> {
    (store.backend() == Backend::Postgres).then(|| format!("{}|{}", store.backend().name(), store.location()))
}

/// Select claimable tasks from several hubs, up to the given count from each, by the
/// algorithm steps 1–4, inside the caller's write transaction: the first
/// claimable rows of each hub's claim queue in (priority, claim rank) order, read from the index
/// `task_queue_order` (on SQLite the queue's primary key; see `claim_rank` for why that
/// order is upstream's weighted sampling),
/// starting at the hub's start hint if `hint_scope` is given and the hint is fresh.
/// Returns, per requested hub, the tasks and whether the hub has no claimable task left
/// afterwards (for this filter). A task actioned on two of the hubs is handed out once.
/// With `require_hub_weight`, hubs whose weight is 0 yield nothing. On PostgreSQL the
/// returned rows are locked: `SKIP LOCKED` passes over rows other claimers hold, and a row
/// another claimer claimed meanwhile fails the re-checked `status = 'waiting'`.
pub(crate) async fn select_from_hubs(
    conn: &mut AnyConnection,
    backend: Backend,
    wants: &[(i64, usize)],
    protocols: Option<&str>,
    require_hub_weight: bool,
    hint_scope: Option<&str>,
) -> Result<Vec<(Vec<Claimed>, bool)>> {
    let mut out = Vec::with_capacity(wants.len());
    let mut taken: HashSet<i64> = HashSet::new();
    for &(hub, count) in wants {
        if count == 0 {
            out.push((Vec::new(), false));
            continue;
        }
        let key = hint_scope.map(|s| hint_key(s, hub, protocols));
        let mut chosen = Vec::with_capacity(count);
        let mut start = key.as_deref().and_then(hint_get);
        loop {
            let sql = dialect(backend, &hub_select(backend, protocols.is_some(), require_hub_weight, start.is_some()));
            let mut q = sqlx::query(&sql).bind(hub);
            if let Some(p) = protocols {
                q = q.bind(p);
            }
            if let Some((priority, rank)) = start {
                q = q.bind(priority).bind(rank);
            }
            // rows already taken (through another hub, or by the hinted select) come back
            // again (this transaction holds them): read past them
            let rows = q.bind((count + taken.len()) as i64).fetch_all(&mut *conn).await?;
            let first = match rows.first() {
                Some(r) => Some((get_i64(r, 5)?, get_f64(r, 6)?)),
                None => None,
            };
            for r in &rows {
                let id = get_i64(r, 0)?;
                if chosen.len() < count && taken.insert(id) {
                    let row = QueueRowRead { hub, priority: get_i64(r, 5)?, rank: get_f64(r, 6)?, shared: get_i64(r, 7)? != 0 };
                    chosen.push(Claimed { id, sk: task_sk(&get_str(r, 1)?, &get_str(r, 2)?, &get_str(r, 3)?, &get_str(r, 4)?)?, row });
                }
            }
            if let Some(key) = &key {
                // a hinted select that found nothing leaves the hint to the unhinted one
                if first.is_some() || start.is_none() {
                    hint_set(key, first);
                }
            }
            if chosen.len() < count && start.is_some() {
                // fewer than wanted past the hint: read the queue from its start
                start = None;
                continue;
            }
            break;
        }
        let drained = chosen.len() < count;
        out.push((chosen, drained));
    }
    Ok(out)
}

/// The select of one hub's first claimable tasks in claim order (before `dialect`): `$1`
/// is the hub, then the protocol list (if any), then with `from_hint` the start hint's
/// priority and rank, then the limit. Returns the task's id and ScopedKey parts, then the
/// row's priority and rank, then whether the row is shared (see [`QueueRowRead`]; on SQLite
/// an index lookup in a table that grows with transformations, not tasks; on PostgreSQL
/// always 1). Shared with `claim_plan`, which explains exactly this statement.
pub(crate) fn hub_select(backend: Backend, protocols: bool, require_hub_weight: bool, from_hint: bool) -> String {
    let mut next = if protocols { 3 } else { 2 };
    let hint = if from_hint {
        next += 2;
        format!(" AND (q.priority, q.claim_rank) >= (${}, ${})", next - 2, next - 1)
    } else {
        String::new()
    };
    let lock = if backend == Backend::Postgres { " FOR UPDATE OF t SKIP LOCKED" } else { "" };
    let shared = match backend {
        Backend::Sqlite => {
            "CASE WHEN EXISTS (SELECT 1 FROM network_transformation nt WHERE nt.transformation_id = t.transformation_id \
             AND nt.network_id <> q.network_id) THEN 1 ELSE 0 END"
        }
        Backend::Postgres => "1",
    };
    format!(
        "SELECT t.id, t.gufe_key, t.org, t.campaign, t.project, q.priority, q.claim_rank, {shared} {}{hint} \
         ORDER BY q.priority, q.claim_rank LIMIT ${next}{lock}",
        hub_candidates(backend, protocols, require_hub_weight)
    )
}

/// The FROM/WHERE of the candidates of one hub: `$1` is the hub, the protocol list (if
/// any) is `$2`.
fn hub_candidates(backend: Backend, protocols: bool, require_hub_weight: bool) -> String {
    // uncorrelated, so evaluated once per statement rather than once per candidate
    let weight_check = if require_hub_weight { " AND EXISTS (SELECT 1 FROM network n WHERE n.id = $1 AND n.weight > 0)" } else { "" };
    format!(
        "FROM task_queue q JOIN task t ON t.id = q.task_id WHERE q.network_id = $1{weight_check} AND {}",
        claimable_condition(backend, protocols.then_some(2))
    )
}
