//! The claim queue: how waiting tasks are ranked for claiming, and the table that holds
//! the ranks.
//!
//! A claim from a hub takes whole priority groups while they fit, then a weighted sample
//! without replacement (by ACTIONS weight) of the next group. Drawing that sample afresh
//! for every claim needs every candidate of the hub: a pass that grows with the hub and,
//! on PostgreSQL, dominated the cost of a claim. Instead the table `task_queue` holds one
//! row per ACTIONS row whose task is waiting and whose weight is above 0, with the task's
//! priority and a *claim rank*, and a claim reads the first rows of the hub in (priority,
//! rank) order (on SQLite the table is clustered in that order; on PostgreSQL through the
//! index `task_queue_order`): work proportional to the tasks claimed,
//! however large the hub. Rows of running, errored or weight-0 work are not in the queue,
//! so they are never stepped over. Every change that makes a task stop waiting deletes its
//! queue rows in the same transaction ([`leave_queue`]); every change that makes one wait
//! again, or changes a row's weight or priority, draws it afresh ([`requeue`]). Each
//! ACTIONS row records the key (priority, rank) of its queue row, by which SQLite finds it
//! ([`queue_rows_of`]); a claim, which has just read the row, deletes it by that key
//! without the lookup when no other network holds the task's transformation
//! ([`leave_queue_claimed`]).
//!
//! The queue is a table of its own rather than a flag on ACTIONS because of what a claim
//! writes. Turning a flag off rewrote the ACTIONS row: on PostgreSQL a new row version with
//! an entry in every index of ACTIONS, at random places of indexes as large as the table,
//! and after each checkpoint a full page image of every page touched first. Deleting a
//! queue row only marks it in its page, which claims in rank order visit one after another.
//!
//! Ranks are exponential clocks (Efraimidis–Spirakis): a row of weight `w` rings at
//! `time + E/w`, `E ~ Exp(1)`. The order in which the clocks of a set ring is a weighted
//! random permutation and, clocks being memoryless, the next of the rows still waiting to
//! ring is at every claim a weighted draw from exactly those rows: a sequence of claims
//! has the distribution of upstream's per-claim draws, provided a row that enters (or
//! re-enters) the race starts its clock at the group's current *time*, the rank of the
//! last row claimed. Each group's time is kept in `claim_clock`: every queue row that
//! leaves because its task stopped waiting (claimed, mostly) advances its group's clock to
//! its rank. A group nothing has left yet takes the smallest rank among its waiting rows,
//! else 0. Ranks are drawn when a row is actioned, when its weight changes, when its
//! task's priority changes (the row joins another group) and when its task returns to
//! `waiting`: a failed, released or restarted task rejoins the race, as upstream's fresh
//! draw would have it, instead of keeping the head of the queue.
//!
//! Approximations (each only shifts odds by about one claim's worth of clock):
//! * a task that becomes claimable when the task it extends completes keeps the rank
//!   drawn when it was actioned, so it tends to be claimed soon;
//! * a task actioned on two hubs and claimed through one leaves both queues, and
//!   advances both clocks.

use std::collections::HashMap;

use rand::Rng;
use sqlx::AnyConnection;

use crate::claim_select::QueueRowRead;
use crate::db::{
    bind, dialect, execute_in_chunks, fetch_in_chunks, fetch_json_rows, get_f64, get_i64, json_id_list, json_ids, json_insert,
    json_rows_select, json_update, values_rows, Arg, Col, MAX_PARAMS,
};
use crate::error::Result;
use crate::Backend;

/// The latest a clock rings (finite, so every rank survives JSON and SQL round trips
/// whatever tiny weight drew it).
const LATEST: f64 = 1e300;

/// A clock for weight `w > 0` started at `time`.
fn draw(rng: &mut impl Rng, time: f64, w: f64) -> f64 {
    let e = -(1.0 - rng.gen::<f64>()).ln();
    (time + e / w).min(LATEST)
}

/// (hub, priority, claim rank, task): one row of `task_queue`.
pub(crate) type QueueRow = (i64, i64, f64, i64);

/// Insert queue rows, in (hub, priority, rank) order so that claims, which take them in
/// that order, find neighbours in the same pages, and record each row's key in its ACTIONS
/// row (see [`queue_rows_of`]).
async fn enqueue(conn: &mut AnyConnection, backend: Backend, rows: Vec<QueueRow>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let json = queue_json(rows);
    let sql = json_update(
        backend,
        "task_action",
        &[("queue_priority", 1, Col::Int), ("claim_rank", 2, Col::Real)],
        &[("network_id", 0, Col::Int), ("task_id", 3, Col::Int)],
        "",
    );
    sqlx::query(&dialect(backend, &sql)).bind(json.clone()).execute(&mut *conn).await?;
    insert_queue_rows(conn, backend, json).await
}

/// Queue rows as the JSON array [`insert_queue_rows`] takes, sorted in claim order.
pub(crate) fn queue_json(mut rows: Vec<QueueRow>) -> String {
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    let values: Vec<serde_json::Value> = rows.iter().map(|r| serde_json::json!([r.0, r.1, r.2, r.3])).collect();
    serde_json::Value::Array(values).to_string()
}

/// Insert the queue rows of a [`queue_json`] array (whose keys the caller has recorded in
/// their ACTIONS rows).
pub(crate) async fn insert_queue_rows(conn: &mut AnyConnection, backend: Backend, json: String) -> Result<()> {
    let sql = dialect(
        backend,
        &json_insert(backend, "task_queue (network_id, priority, claim_rank, task_id)", &[Col::Int, Col::Int, Col::Real, Col::Int], ""),
    );
    sqlx::query(&sql).bind(json).execute(&mut *conn).await?;
    Ok(())
}

/// The condition that selects the queue rows of the tasks listed by `ids` (an SQL list or
/// subquery; `{}` for the chunked statements of `db`), only those on hub `hub` (an SQL
/// expression) if given.
///
/// On SQLite the queue is a table clustered on its key (hub, priority, rank, task) with
/// no other index, so the rows are found by the keys their ACTIONS rows record (every
/// insert into the queue records them; a key left behind when its row left the queue
/// matches nothing). A claim thus writes the front of the queue and not, besides, an
/// index entry by task at a random place: at 1,000,000 tasks that entry was about a page
/// per claim, written to the log and copied back by the checkpoint. PostgreSQL leaves
/// index entries in place when it deletes a row, so there a claim does not write its
/// index by task, and the rows are found through it.
fn queue_rows_of(backend: Backend, ids: &str, hub: Option<&str>) -> String {
    match backend {
        Backend::Sqlite => {
            let on_hub = hub.map(|h| format!(" AND network_id = {h}")).unwrap_or_default();
            format!(
                "(network_id, priority, claim_rank, task_id) IN (SELECT network_id, queue_priority, claim_rank, task_id \
                 FROM task_action WHERE task_id IN ({ids}){on_hub} AND claim_rank IS NOT NULL)"
            )
        }
        Backend::Postgres => {
            let on_hub = hub.map(|h| format!(" AND network_id = {h}")).unwrap_or_default();
            format!("task_id IN ({ids}){on_hub}")
        }
    }
}

/// Delete the queue rows of `tasks` (ids as arguments; only those on `hub`, if given)
/// inside the caller's write transaction, leaving the clocks as they are. Before the
/// tasks' ACTIONS rows go: on SQLite the queue rows are found through them.
pub(crate) async fn drop_queue_rows(conn: &mut AnyConnection, backend: Backend, tasks: &[Arg], hub: Option<i64>) -> Result<()> {
    let sql = format!("DELETE FROM task_queue WHERE {}", queue_rows_of(backend, "{}", hub.map(|_| "$1")));
    let fixed: Vec<Arg> = hub.map(Arg::I64).into_iter().collect();
    execute_in_chunks(conn, backend, &sql, &fixed, tasks).await?;
    Ok(())
}

/// Draw the ACTIONS rows of `tasks` (only those on `hub`, if given) afresh, inside the
/// caller's write transaction: their queue rows go, and the rows of waiting tasks with a
/// weight above 0 come back with clocks started at their group's time.
pub(crate) async fn requeue(conn: &mut AnyConnection, backend: Backend, tasks: &[i64], hub: Option<i64>) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let mut args = vec![Arg::Text(json_ids(tasks))];
    if let Some(h) = hub {
        args.push(Arg::I64(h));
    }
    let on_hub = |alias: &str| if hub.is_some() { format!(" AND {alias}network_id = $2") } else { String::new() };
    let ids: Vec<Arg> = tasks.iter().map(|&id| Arg::I64(id)).collect();
    drop_queue_rows(conn, backend, &ids, hub).await?;
    let sql = dialect(
        backend,
        &format!(
            "{} FROM task_action a JOIN task t ON t.id = a.task_id WHERE a.task_id IN ({}){} AND a.weight > 0 AND t.status = 'waiting'",
            json_rows_select(backend, "a.network_id, a.task_id, a.weight, t.priority"),
            json_id_list(backend, 1),
            on_hub("a.")
        ),
    );
    let rows: Vec<(i64, i64, f64, i64)> = fetch_json_rows(conn, &sql, &args).await?;
    let times = group_times(conn, backend, rows.iter().map(|&(network, _, _, priority)| (network, priority)).collect()).await?;
    let queue: Vec<QueueRow> = {
        let mut rng = rand::thread_rng();
        rows.into_iter()
            .map(|(network, task, weight, priority)| (network, priority, draw(&mut rng, times[&(network, priority)], weight), task))
            .collect()
    };
    enqueue(conn, backend, queue).await
}

/// Take the queue rows of `tasks` (ids as arguments) out of the claim queue, inside the
/// caller's write transaction, because the tasks stopped waiting: each row's group clock
/// advances to its rank (see [`advance_clocks`]).
pub(crate) async fn leave_queue(conn: &mut AnyConnection, backend: Backend, tasks: &[Arg]) -> Result<()> {
    let left = delete_queue_rows(conn, backend, tasks).await?;
    advance_clocks(conn, backend, &left).await
}

/// Delete the queue rows of `tasks`; returns the (hub, priority, rank) of each.
async fn delete_queue_rows(conn: &mut AnyConnection, backend: Backend, tasks: &[Arg]) -> Result<Vec<(i64, i64, f64)>> {
    let rows = fetch_in_chunks(
        conn,
        backend,
        &format!("DELETE FROM task_queue WHERE {} RETURNING network_id, priority, claim_rank", queue_rows_of(backend, "{}", None)),
        &[],
        tasks,
    )
    .await?;
    rows.iter().map(|r| Ok((get_i64(r, 0)?, get_i64(r, 1)?, get_f64(r, 2)?))).collect()
}

/// Take claimed tasks out of the claim queue, given the queue rows their claim's select read
/// ([`QueueRowRead`]), inside the claim transaction. On SQLite a task whose transformation
/// no other network holds has no queue row but that one, which is deleted by its key: the
/// front of the queue, which the select has just read. Finding a task's rows through its
/// ACTIONS rows (what [`leave_queue`] does, and does here for the other tasks) costs
/// lookups at random places of a table as large as the store: at 1,000,000 tasks C10 claims
/// ran at 3,360–3,520 /s that way and 4,200–4,560 /s this way (`bench claims --curve`, the
/// two binaries alternated). PostgreSQL finds every task's rows through its index by task,
/// as before.
pub(crate) async fn leave_queue_claimed(conn: &mut AnyConnection, backend: Backend, claimed: &[(i64, QueueRowRead)]) -> Result<()> {
    // (on PostgreSQL every row is shared: see `QueueRowRead`)
    let (shared, keyed): (Vec<&(i64, QueueRowRead)>, Vec<_>) = claimed.iter().partition(|(_, row)| row.shared);
    let others: Vec<Arg> = shared.iter().map(|&&(id, _)| Arg::I64(id)).collect();
    let mut left = if others.is_empty() { Vec::new() } else { delete_queue_rows(conn, backend, &others).await? };
    // the keys as parameters: a rank must come back bit for bit
    for chunk in keyed.chunks(MAX_PARAMS / 4) {
        let sql = dialect(
            backend,
            &format!(
                "DELETE FROM task_queue WHERE (network_id, priority, claim_rank, task_id) IN (VALUES {}) \
                 RETURNING network_id, priority, claim_rank",
                values_rows(chunk.len(), 4)
            ),
        );
        let args: Vec<Arg> =
            chunk.iter().flat_map(|&&(id, r)| [Arg::I64(r.hub), Arg::I64(r.priority), Arg::F64(r.rank), Arg::I64(id)]).collect();
        for r in bind(sqlx::query(&sql), &args).persistent(false).fetch_all(&mut *conn).await? {
            left.push((get_i64(&r, 0)?, get_i64(&r, 1)?, get_f64(&r, 2)?));
        }
    }
    advance_clocks(conn, backend, &left).await
}

/// Advance the group clock of each queue row that left (hub, priority, rank) to its rank.
/// The clocks are written last and in (hub, priority) order, so concurrent claim
/// transactions that share a group hold its clock row briefly and never wait on each other
/// in a cycle.
async fn advance_clocks(conn: &mut AnyConnection, backend: Backend, left: &[(i64, i64, f64)]) -> Result<()> {
    let mut reached: HashMap<(i64, i64), f64> = HashMap::new();
    for &(hub, priority, rank) in left {
        let e = reached.entry((hub, priority)).or_insert(rank);
        *e = e.max(rank);
    }
    let mut clocks: Vec<((i64, i64), f64)> = reached.into_iter().collect();
    clocks.sort_by_key(|c| c.0);
    let greatest = if backend == Backend::Postgres { "GREATEST" } else { "MAX" };
    for chunk in clocks.chunks(MAX_PARAMS / 3) {
        let sql = dialect(
            backend,
            &format!(
                "INSERT INTO claim_clock (network_id, priority, reached) VALUES {} ON CONFLICT (network_id, priority) \
                 DO UPDATE SET reached = {greatest}(claim_clock.reached, excluded.reached) WHERE claim_clock.reached < excluded.reached",
                values_rows(chunk.len(), 3)
            ),
        );
        let args: Vec<Arg> = chunk.iter().flat_map(|&((n, p), r)| [Arg::I64(n), Arg::I64(p), Arg::F64(r)]).collect();
        bind(sqlx::query(&sql), &args).persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The time of each (hub, priority) group in `groups`, each looked up once.
async fn group_times(conn: &mut AnyConnection, backend: Backend, groups: Vec<(i64, i64)>) -> Result<HashMap<(i64, i64), f64>> {
    let mut times = HashMap::new();
    for group in groups {
        if let std::collections::hash_map::Entry::Vacant(e) = times.entry(group) {
            e.insert(group_time(conn, backend, group.0, group.1).await?);
        }
    }
    Ok(times)
}

/// A group's time: its clock, else the smallest rank among its waiting rows, else 0.
async fn group_time(conn: &mut AnyConnection, backend: Backend, hub: i64, priority: i64) -> Result<f64> {
    let clock = sqlx::query(&dialect(backend, "SELECT reached FROM claim_clock WHERE network_id = $1 AND priority = $2"))
        .bind(hub)
        .bind(priority)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(r) = clock {
        return get_f64(&r, 0);
    }
    let first = sqlx::query(&dialect(
        backend,
        "SELECT claim_rank FROM task_queue WHERE network_id = $1 AND priority = $2 ORDER BY claim_rank LIMIT 1",
    ))
    .bind(hub)
    .bind(priority)
    .fetch_optional(&mut *conn)
    .await?;
    first.map(|r| get_f64(&r, 0)).transpose().map(|t| t.unwrap_or(0.0))
}

/// Ranks for rows about to be queued on `hub`, one per (task priority, weight above 0):
/// clocks started at their group's current time, as [`requeue`] would draw them after the
/// insert — without the read-back.
pub(crate) async fn fresh_ranks(conn: &mut AnyConnection, backend: Backend, hub: i64, rows: &[(i64, f64)]) -> Result<Vec<f64>> {
    let times = group_times(conn, backend, rows.iter().map(|&(p, _)| (hub, p)).collect()).await?;
    let mut rng = rand::thread_rng();
    Ok(rows.iter().map(|&(p, w)| draw(&mut rng, times[&(hub, p)], w)).collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Taking the smallest of the clocks again and again draws by weight: with weights
    /// 3 : 1 the heavy row comes first about three times in four.
    #[test]
    fn clocks_draw_by_weight() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        let heavy_first = (0..n).filter(|_| draw(&mut rng, 5.0, 3.0) < draw(&mut rng, 5.0, 1.0)).count();
        let share = heavy_first as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "heavy row first in {share} of draws");
    }

    /// On SQLite a task's queue rows are found by the keys its ACTIONS rows record, through
    /// the queue's primary key, with or without a hub: no scan of the queue.
    #[tokio::test]
    async fn queue_rows_are_found_by_key() {
        let ts = crate::testing::sqlite().await;
        for hub in [None, Some("$2")] {
            let sql = format!(
                "EXPLAIN QUERY PLAN DELETE FROM task_queue WHERE {}",
                queue_rows_of(Backend::Sqlite, &json_id_list(Backend::Sqlite, 1), hub)
            );
            let sql = dialect(Backend::Sqlite, &sql);
            let mut q = sqlx::query(&sql).bind("[1, 2]");
            if hub.is_some() {
                q = q.bind(7_i64);
            }
            let rows = q.fetch_all(&ts.store.write).await.unwrap();
            let plan: Vec<String> = rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, 3).unwrap()).collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains("SEARCH task_queue USING PRIMARY KEY (network_id=? AND priority=? AND claim_rank=? AND task_id=?)"),
                "{plan}"
            );
            assert!(plan.contains("SEARCH task_action USING"), "{plan}");
            assert!(!plan.contains("SCAN task"), "{plan}");
        }
        ts.store.close().await;
    }

    /// On SQLite a claim deletes the queue rows it read through the queue's primary key.
    #[tokio::test]
    async fn claimed_rows_are_deleted_by_key() {
        let ts = crate::testing::sqlite().await;
        let sql = dialect(
            Backend::Sqlite,
            &format!(
                "EXPLAIN QUERY PLAN DELETE FROM task_queue WHERE (network_id, priority, claim_rank, task_id) IN (VALUES {})",
                values_rows(2, 4)
            ),
        );
        let args = [Arg::I64(1), Arg::I64(10), Arg::F64(0.5), Arg::I64(3), Arg::I64(1), Arg::I64(10), Arg::F64(0.7), Arg::I64(4)];
        let rows = bind(sqlx::query(&sql), &args).fetch_all(&ts.store.write).await.unwrap();
        let plan: Vec<String> = rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, 3).unwrap()).collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("SEARCH task_queue USING PRIMARY KEY (network_id=? AND priority=? AND claim_rank=? AND task_id=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN task_queue"), "{plan}");
        ts.store.close().await;
    }

    /// SQLite runs the bulk update of ACTIONS rows from a JSON array row by row, each
    /// looked up by its key (not the whole table or hub for each row).
    #[tokio::test]
    async fn actions_are_updated_by_key() {
        let ts = crate::testing::sqlite().await;
        let sql = json_update(
            Backend::Sqlite,
            "task_action",
            &[("queue_priority", 1, Col::Int), ("claim_rank", 2, Col::Real)],
            &[("network_id", 0, Col::Int), ("task_id", 3, Col::Int)],
            "",
        );
        let sql = dialect(Backend::Sqlite, &format!("EXPLAIN QUERY PLAN {sql}"));
        let rows = sqlx::query(&sql).bind("[[1, 10, 0.5, 3]]").fetch_all(&ts.store.write).await.unwrap();
        let plan: Vec<String> = rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, 3).unwrap()).collect();
        assert!(plan[0].starts_with("SCAN json_each"), "{plan:?}");
        assert!(plan[1].contains("task_action USING") && plan[1].contains("(network_id=? AND task_id=?)"), "{plan:?}");
        ts.store.close().await;
    }

    #[test]
    fn clocks_start_at_the_group_time() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let r = draw(&mut rng, 42.0, 0.5);
            assert!((42.0..=LATEST).contains(&r));
        }
        for _ in 0..1000 {
            assert!(draw(&mut rng, 42.0, f64::MIN_POSITIVE).is_finite());
        }
    }
}
