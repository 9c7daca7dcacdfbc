//! The claim queue: how ACTIONS rows are ranked for claiming.
//!
//! A claim from a hub takes whole priority groups while they fit, then a weighted sample
//! without replacement (by ACTIONS weight) of the next group. Drawing that sample afresh
//! for every claim needs every candidate of the hub: a pass that grows with the hub and,
//! on PostgreSQL, dominated the cost of a claim. Instead every ACTIONS row carries its
//! task's priority and a *claim rank*, and a claim reads the first claimable rows of the
//! hub in (priority, rank) order from the index `task_action_queue`: work proportional to
//! the tasks claimed, however large the hub. That index is partial: it holds only the rows
//! whose task is waiting (`queued = 1`, kept by every status change), so the rows of the
//! running and errored tasks that stay actioned are not stepped over; they are in
//! `task_action_claimed` (`queued = 0`), whose top end is the group's time.
//!
//! Ranks are exponential clocks (Efraimidis–Spirakis): a row of weight `w` rings at
//! `time + E/w`, `E ~ Exp(1)`. The order in which the clocks of a set ring is a weighted
//! random permutation and, clocks being memoryless, the next of the rows still waiting to
//! ring is at every claim a weighted draw from exactly those rows: a sequence of claims
//! has the distribution of upstream's per-claim draws, provided a row that enters (or
//! re-enters) the race starts its clock at the group's current *time*, the rank of the
//! last row claimed. The time is read from the group itself: the largest rank among rows
//! whose task is not waiting (claimed earlier and still running or errored), else the
//! smallest rank among waiting rows, else 0. Ranks are redrawn when a row is actioned,
//! when its weight changes, when its task's priority changes (the row joins another
//! group) and when its task returns to `waiting`: a failed, released or restarted task
//! rejoins the race, as upstream's fresh draw would have it, instead of keeping the head
//! of the queue.
//!
//! Approximations (each only shifts odds by about one claim's worth of clock):
//! * when every claimed row of a group has left the hub (completed tasks are
//!   unactioned), the smallest waiting rank stands in for the group's time;
//! * a task that becomes claimable when the task it extends completes keeps the rank
//!   drawn when it was actioned, so it tends to be claimed soon;
//! * a task actioned on two hubs and claimed through one counts as claimed in the other.
//!
//! Weight-0 rows are never claimed (the claim conditions say `weight > 0`); they get a
//! rank past every other one and do not count towards a group's time.

use std::collections::HashMap;

use rand::Rng;
use sqlx::AnyConnection;

use crate::db::{bind, dialect, fetch_json_rows, json_id_list, json_ids, json_rows_select, values_rows, Arg, MAX_PARAMS};
use crate::error::Result;
use crate::Backend;

/// The rank of a weight-0 row (finite, so it survives every JSON and SQL round trip).
const NEVER: f64 = 1e300;

/// Why rows are (re)drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Newly actioned, re-weighted or re-prioritised rows: their old ranks mean nothing.
    Fresh,
    /// Rows whose task returns to `waiting` after a claim: their old ranks are times
    /// the group has already reached.
    Returning,
}

/// A clock for weight `w` started at `time`.
fn draw(rng: &mut impl Rng, time: f64, w: f64) -> f64 {
    if w > 0.0 {
        let e = -(1.0 - rng.gen::<f64>()).ln();
        (time + e / w).min(NEVER / 2.0)
    } else {
        NEVER
    }
}

/// Redraw the ranks, and refresh the priority copy, of the ACTIONS rows of `tasks` (only
/// those on `hub`, if given), inside the caller's write transaction.
pub(crate) async fn redraw(conn: &mut AnyConnection, backend: Backend, tasks: &[i64], hub: Option<i64>, entry: Entry) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let ids = json_ids(tasks);
    let hub_condition = if hub.is_some() { " AND a.network_id = $2" } else { "" };
    let sql = format!(
        "{} FROM task_action a JOIN task t ON t.id = a.task_id WHERE a.task_id IN ({}){hub_condition}",
        json_rows_select(backend, "a.network_id, a.task_id, a.weight, t.priority, a.claim_rank"),
        json_id_list(backend, 1)
    );
    let mut args = vec![Arg::Text(ids.clone())];
    if let Some(h) = hub {
        args.push(Arg::I64(h));
    }
    let rows: Vec<(i64, i64, f64, i64, f64)> = fetch_json_rows(conn, &sql, &args).await?;
    if rows.is_empty() {
        return Ok(());
    }
    // (hub, priority) -> [(task, weight, old rank)]
    type Group = Vec<(i64, f64, f64)>;
    let mut groups: HashMap<(i64, i64), Group> = HashMap::new();
    for (network, task, weight, priority, old) in rows {
        groups.entry((network, priority)).or_default().push((task, weight, old));
    }
    let mut updates: Vec<[Arg; 4]> = Vec::new();
    for ((network, priority), members) in groups {
        let (claimed, waiting) = group_clocks(conn, backend, network, priority, &ids).await?;
        // a returning row was claimed: its old rank is a time the group has reached
        let returning = members.iter().filter(|m| entry == Entry::Returning && m.1 > 0.0 && m.2 < NEVER / 2.0).map(|m| m.2);
        let claimed = claimed.into_iter().chain(returning).reduce(f64::max);
        let time = claimed.or(waiting).unwrap_or(0.0);
        let mut rng = rand::thread_rng();
        for (task, weight, _) in members {
            updates.push([Arg::I64(network), Arg::I64(task), Arg::I64(priority), Arg::F64(draw(&mut rng, time, weight))]);
        }
    }
    for chunk in updates.chunks(MAX_PARAMS / 4) {
        let sql = dialect(
            backend,
            &format!(
                "UPDATE task_action SET priority = v.column3, claim_rank = v.column4 FROM (VALUES {}) AS v \
                 WHERE task_action.network_id = v.column1 AND task_action.task_id = v.column2",
                values_rows(chunk.len(), 4)
            ),
        );
        let args: Vec<Arg> = chunk.iter().flat_map(|r| r.iter().cloned()).collect();
        bind(sqlx::query(&sql), &args).persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// A group's clocks: the largest rank among rows whose task is not waiting (claimed
/// earlier), and the smallest among waiting rows, leaving out the tasks in `exclude` (a
/// JSON array of ids) and weight-0 rows. Each is read from one end of its partial index,
/// so the cost does not grow with the group (beyond the excluded and weight-0 rows
/// stepped over).
async fn group_clocks(
    conn: &mut AnyConnection,
    backend: Backend,
    hub: i64,
    priority: i64,
    exclude: &str,
) -> Result<(Option<f64>, Option<f64>)> {
    let mut out = [None, None];
    for (slot, (queued, order)) in [("0", "DESC"), ("1", "ASC")].into_iter().enumerate() {
        let sql = dialect(
            backend,
            &format!(
                "SELECT a.claim_rank FROM task_action a WHERE a.network_id = $1 AND a.priority = $2 AND a.queued = {queued} \
                 AND a.weight > 0 AND a.task_id NOT IN ({}) ORDER BY a.claim_rank {order} LIMIT 1",
                json_id_list(backend, 3)
            ),
        );
        let row = sqlx::query(&sql).bind(hub).bind(priority).bind(exclude.to_string()).fetch_optional(&mut *conn).await?;
        out[slot] = row.map(|r| sqlx::Row::try_get::<f64, _>(&r, 0)).transpose()?;
    }
    Ok((out[0], out[1]))
}

/// Ranks for rows about to be actioned on `hub` with `weight`, one per task priority:
/// clocks started at their group's current time, as [`redraw`] with [`Entry::Fresh`]
/// would draw them after the insert — without the read-back and update.
pub(crate) async fn fresh_ranks(conn: &mut AnyConnection, backend: Backend, hub: i64, priorities: &[i64], weight: f64) -> Result<Vec<f64>> {
    let mut times: HashMap<i64, f64> = HashMap::new();
    for &priority in priorities {
        if let std::collections::hash_map::Entry::Vacant(e) = times.entry(priority) {
            let (claimed, waiting) = group_clocks(conn, backend, hub, priority, "[]").await?;
            e.insert(claimed.or(waiting).unwrap_or(0.0));
        }
    }
    let mut rng = rand::thread_rng();
    Ok(priorities.iter().map(|p| draw(&mut rng, times[p], weight)).collect())
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

    #[test]
    fn clocks_start_at_the_group_time_and_weight_zero_never_rings() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let r = draw(&mut rng, 42.0, 0.5);
            assert!((42.0..NEVER).contains(&r));
        }
        assert_eq!(draw(&mut rng, 42.0, 0.0), NEVER);
    }
}
