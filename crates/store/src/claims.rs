//! Claiming: from one TaskHub (C10), or across scopes with a weighted
//! random choice of hubs (C11); both hand a task to at most one service under any
//! concurrency, and record every claim in the claim log (`task_claim_log`, which outlives
//! the claim and decides whose results are accepted). Registrations and failure
//! accounting are in [`crate::compute`].
//!
//! # Atomicity of claims
//!
//! No task may ever hold two claims, and no task may be handed to two services.
//! Claims happen inside write transactions:
//!
//! * SQLite: write transactions run on the single writer connection and start with
//!   `BEGIN IMMEDIATE`, so claims are serialised by construction; candidates are read and
//!   claimed inside the transaction.
//! * PostgreSQL: candidate rows are selected *and locked* with `FOR UPDATE OF t SKIP
//!   LOCKED`, in claim-queue order (priority, claim rank; see `claim_select`). Rows
//!   another claimer holds are skipped; a row another claimer claimed meanwhile fails
//!   the re-checked `status = 'waiting'` (PostgreSQL re-evaluates a locked row's
//!   conditions against its newest version). So claimers — on one hub, or on two hubs
//!   actioning the same task, in one server process or several — never wait on each
//!   other and never share a task; there is no hub lock. The claiming services'
//!   registrations are held `FOR KEY SHARE`, so an expiry or deregistration (which takes
//!   `FOR UPDATE`) cannot interleave with a claim.
//! * Both: the `task_claim` primary key on `task_id` is the backstop; claim rows are
//!   inserted with `ON CONFLICT DO NOTHING RETURNING task_id` and only the tasks actually
//!   inserted move to `running` (through `tasks::apply_status`) and are returned.
//!
//! # Throughput: combining concurrent claims
//!
//! Selecting from a hub reads its claim queue (`claim_rank`, `claim_select`): the first
//! claimable rows in (priority, rank) order from one index, so its cost follows the tasks
//! claimed, not the size of the hub. Each claim still pays for a transaction and its commit. Concurrent
//! [`Store::claim_tasks`] calls for the same search space (scopes, exclusions, protocols,
//! failure policy) in this process are therefore *combined*: each caller queues its
//! request; whoever gets the search space's batch permit runs every queued request in
//! one transaction and answers each. Within a batch each request still draws its own
//! hub(s) by weight and is answered on its own (not registered / denied / its tasks);
//! requests that drew the same hub share one selection of their combined count, whose
//! tasks are dealt out in random order, and one round of selections over all drawn hubs
//! costs a fixed number of statements however many hubs it touches. One pass, one
//! commit (one fsync) then serve many claims. A batch runs in its own task, so it
//! completes even if the caller that started it goes away (should a batch fail or be
//! lost, its callers resubmit). Batches of one search space run one at a time per process
//! (on SQLite they would queue for the single writer anyway; on PostgreSQL one batch at a
//! time measured faster than two); other search spaces and other processes run in
//! parallel as above. [`Store::claim_taskhub_tasks`] (C10) is combined the same way per
//! hub and protocol filter: one selection of the batch's combined count from the hub,
//! dealt out in random order.
//!
//! # Hub choice across scopes
//!
//! Choosing a hub needs the hubs in the search space that have at least one claimable
//! task. With thousands of hubs that query costs far more than the claim itself, so its
//! answer is kept per store and search space in a small process-wide *hub pool* for
//! [`HUB_POOL_TTL`]. The pool is only a hint: the hub's weight and every task condition
//! are re-checked when selecting, a hub found drained is dropped from the pool, and a
//! batch that runs out of pooled hubs re-runs the query inside its transaction before any
//! request gets fewer than its count — so a claim comes back short only if the store, at
//! that moment, had nothing more to give. What a pool can delay by up to
//! [`HUB_POOL_TTL`] is how soon a *raised* hub weight, or a hub that newly received
//! claimable tasks, takes its share of picks while other pooled hubs still have work (a
//! hub set to weight 0 is never claimed from, immediately). Priorities, ACTIONS weights
//! and task states are always read fresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use alchemiscale_model::scope::minimise;
use alchemiscale_model::{ComputeServiceId, Scope, ScopedKey};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sqlx::AnyConnection;

use crate::claim_rank::leave_queue_claimed;
use crate::claim_select::{hint_scope, insert_bounded, select_from_hubs, Claimed, QueueRowRead};
use crate::compute::{can_claim_row, cutoff, service_rows};
use crate::db::{bind, dialect, execute_in_chunks, fetch_json_rows, get_i64, json_array, json_rows_select, json_text_list, Arg};
use crate::error::{Result, StoreError};
use crate::networks::network_id_by_token;
use crate::tasks::id_args;
use crate::{Backend, Store};

/// How long a hub pool (see the module documentation) is trusted before the hub query is
/// run again.
pub const HUB_POOL_TTL: Duration = Duration::from_secs(1);

/// The largest `count` one claim may ask for (the answer has exactly `count` entries, so
/// an unbounded count is a way to make the server allocate without limit). Upstream has
/// no limit; compute services ask for a handful (`claim_limit`, default 1).
pub const MAX_CLAIM_COUNT: usize = 10_000;

const PROTOCOL_NAME_ERROR: &str = "Invalid `Protocol` name among `protocols`";
const EMPTY_PROTOCOLS_ERROR: &str = "`protocols` must be either `None` or not empty";

/// The answer to a claim across scopes.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The service has too many recent failures; the API answers JSON `null`.
    Denied,
    /// Claimed task keys first, then `None` up to the requested count.
    Claimed(Vec<Option<ScopedKey>>),
}

/// Validate a protocol filter: `None` = no filter; otherwise a non-empty
/// list of names matching `^[a-zA-Z][a-zA-Z0-9_]*$`. Returns the distinct names, sorted.
pub(crate) fn protocol_filter(protocols: Option<&[String]>) -> Result<Option<Vec<String>>> {
    let Some(list) = protocols else { return Ok(None) };
    if list.is_empty() {
        return Err(StoreError::Invalid(EMPTY_PROTOCOLS_ERROR.into()));
    }
    // (the grammar of scope components)
    if !list.iter().all(|p| alchemiscale_model::scope::is_valid_component(p)) {
        return Err(StoreError::Invalid(PROTOCOL_NAME_ERROR.into()));
    }
    let mut names = list.to_vec();
    names.sort();
    names.dedup();
    Ok(Some(names))
}

/// `(alias.org = $i AND …) OR (…)` for the scopes (a `*-*-*` scope is `1 = 1`); `1 = 0`
/// for no scopes. Parameters are appended to `args`.
pub(crate) fn scopes_condition(alias: &str, scopes: &[Scope], args: &mut Vec<Arg>) -> String {
    if scopes.is_empty() {
        return "1 = 0".into();
    }
    let mut alternatives = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let mut parts = vec!["1 = 1".to_string()];
        for (col, value) in [("org", scope.org()), ("campaign", scope.campaign()), ("project", scope.project())] {
            if let Some(v) = value {
                args.push(Arg::from(v));
                parts.push(format!("{alias}.{col} = ${}", args.len()));
            }
        }
        alternatives.push(format!("({})", parts.join(" AND ")));
    }
    alternatives.join(" OR ")
}

/// The conditions that make a task `t` in the claim queue (joined with its queue row `q`,
/// which stands for an ACTIONS row of weight above 0 of a waiting task; see `claim_rank`)
/// claimable, plus "no claim yet" (step 5). With `protocols`, the JSON list of protocol
/// names is parameter `$protocols_param`. The status is checked again on the task row.
pub(crate) fn claimable_condition(backend: Backend, protocols_param: Option<usize>) -> String {
    let mut s = String::from(
        "t.status = 'waiting' \
         AND EXISTS (SELECT 1 FROM network ns WHERE ns.id = q.network_id AND ns.state IN ('active', 'inactive')) \
         AND (t.extends_id IS NULL OR EXISTS (SELECT 1 FROM task p WHERE p.id = t.extends_id AND p.status = 'complete')) \
         AND NOT EXISTS (SELECT 1 FROM task_claim k WHERE k.task_id = t.id)",
    );
    if let Some(n) = protocols_param {
        s.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM transformation f WHERE f.id = t.transformation_id AND f.protocol IN ({}))",
            json_text_list(backend, n)
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Hub pools (see the module documentation).

struct HubPool {
    fetched: Instant,
    /// (network row id = hub, hub weight > 0)
    hubs: Vec<(i64, f64)>,
}

static HUB_POOLS: LazyLock<Mutex<HashMap<String, HubPool>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Most search spaces kept at once; beyond that stale pools are dropped, then all.
const MAX_POOLS: usize = 256;

enum Pick {
    Hub(i64),
    /// The pool is fresh but has no hub left that this call has not tried.
    Exhausted,
    /// No pool, or an expired one.
    Stale,
}

fn pools() -> std::sync::MutexGuard<'static, HashMap<String, HubPool>> {
    // a panic while holding the lock cannot leave a pool inconsistent: use it anyway
    HUB_POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Weighted random choice among the pooled hubs not yet tried by a request.
/// With `any_age`, an expired pool is used too (the caller refreshed it in this call, so
/// a slow refresh cannot make it loop).
fn pool_pick(key: &str, tried: &HashSet<i64>, any_age: bool, rng: &mut StdRng) -> Pick {
    let map = pools();
    let Some(pool) = map.get(key) else { return Pick::Stale };
    if !any_age && pool.fetched.elapsed() > HUB_POOL_TTL {
        return Pick::Stale;
    }
    let total: f64 = pool.hubs.iter().filter(|(h, _)| !tried.contains(h)).map(|(_, w)| *w).sum();
    if total <= 0.0 || total.is_nan() {
        return Pick::Exhausted;
    }
    let mut x = rng.gen::<f64>() * total;
    let mut last = None;
    for (h, w) in pool.hubs.iter().filter(|(h, _)| !tried.contains(h)) {
        last = Some(*h);
        if x < *w {
            return Pick::Hub(*h);
        }
        x -= *w;
    }
    last.map(Pick::Hub).unwrap_or(Pick::Exhausted)
}

fn pool_store(key: &str, hubs: Vec<(i64, f64)>) {
    let pool = HubPool { fetched: Instant::now(), hubs };
    insert_bounded(&mut pools(), key, pool, MAX_POOLS, |p| p.fetched.elapsed() > HUB_POOL_TTL);
}

fn pool_evict(key: &str, hub: i64) {
    if let Some(pool) = pools().get_mut(key) {
        pool.hubs.retain(|(h, _)| *h != hub);
    }
}

// ---------------------------------------------------------------------------------------
// Combining concurrent claims (see the module documentation).

/// What a claim across scopes searches: everything that makes two requests combinable.
#[derive(Clone)]
struct ClaimSpace {
    scopes: Vec<Scope>,
    exclude: Vec<Scope>,
    /// JSON list of protocol names, or None for no filter.
    protocols: Option<String>,
    forgive_seconds: i64,
    max_failures: i64,
}

impl ClaimSpace {
    /// Identifies the store and the search space (hub pools and combiners are keyed by it).
    fn key(&self, store: &Store) -> String {
        let list = |v: &[Scope]| v.iter().map(Scope::to_string).collect::<Vec<_>>().join(",");
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            store.backend().name(),
            store.location(),
            list(&self.scopes),
            list(&self.exclude),
            self.protocols.as_deref().unwrap_or("*"),
            self.forgive_seconds,
            self.max_failures
        )
    }
}

/// What a batch of combined claims claims from.
#[derive(Clone)]
enum Target {
    /// C11: hubs drawn by weight within a search space.
    Scopes(ClaimSpace),
    /// C10: one named hub (a TaskHub ScopedKey), with an optional JSON protocol list.
    Hub { hub: ScopedKey, protocols: Option<String> },
}

/// One caller's claim, waiting to be run in a batch.
struct ClaimRequest {
    service: ComputeServiceId,
    count: usize,
    reply: Option<tokio::sync::oneshot::Sender<Result<ClaimOutcome>>>,
}

/// A request being served within a batch.
struct Active {
    index: usize,
    service_row: i64,
    remaining: usize,
    tried: HashSet<i64>,
    claimed: Vec<ScopedKey>,
}

/// The queue of claims for one search space and the permits to run batches of it.
struct Combiner {
    queue: Mutex<Vec<ClaimRequest>>,
    permits: tokio::sync::Semaphore,
}

impl Combiner {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<ClaimRequest>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static COMBINERS: LazyLock<Mutex<HashMap<String, Arc<Combiner>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The combiner of a search space. Its batches run one at a time per process: on SQLite
/// they would queue for the single writer anyway, and on PostgreSQL one at a time measured
/// faster than two.
fn combiner(key: &str) -> Arc<Combiner> {
    let mut map = COMBINERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = map.get(key) {
        return c.clone();
    }
    if map.len() >= MAX_POOLS {
        // forget idle combiners (nobody holds them)
        map.retain(|_, c| Arc::strong_count(c) > 1);
    }
    let c = Arc::new(Combiner { queue: Mutex::new(Vec::new()), permits: tokio::sync::Semaphore::new(1) });
    map.insert(key.to_string(), c.clone());
    c
}

/// Record claims (task row id, service row id, the queue row its select read) and move the
/// claimed tasks from `waiting` to `running`. The `task_claim` primary key is the backstop:
/// rows are inserted with `ON CONFLICT DO NOTHING RETURNING task_id` and only the tasks
/// actually claimed change status; their ids are returned. The change to `running` has no
/// effect beyond the status and leaving the claim queue (`transition_effects`; see the test
/// `running_has_no_other_effect`), so it is done here rather than through `apply_status`,
/// and the tasks leave the queue by the rows their select read ([`leave_queue_claimed`]).
async fn record_claims(conn: &mut AnyConnection, backend: Backend, claims: &[(i64, i64, QueueRowRead)]) -> Result<HashSet<i64>> {
    let mut inserted = HashSet::with_capacity(claims.len());
    if claims.is_empty() {
        return Ok(inserted);
    }
    let now = crate::now_micros();
    for chunk in claims.chunks(crate::db::MAX_PARAMS / 3) {
        let sql = dialect(
            backend,
            &format!(
                "INSERT INTO task_claim (task_id, service_id, claimed) VALUES {} ON CONFLICT DO NOTHING RETURNING task_id",
                crate::db::values_rows(chunk.len(), 3)
            ),
        );
        let args: Vec<Arg> = chunk.iter().flat_map(|&(t, s, _)| [Arg::I64(t), Arg::I64(s), Arg::I64(now)]).collect();
        for r in bind(sqlx::query(&sql), &args).persistent(false).fetch_all(&mut *conn).await? {
            inserted.insert(get_i64(&r, 0)?);
        }
    }
    let mut ids: Vec<i64> = inserted.iter().copied().collect();
    ids.sort_unstable();
    execute_in_chunks(conn, backend, "UPDATE task SET status = 'running' WHERE id IN ({})", &[], &id_args(&ids)).await?;
    let left: Vec<(i64, QueueRowRead)> = claims.iter().filter(|c| inserted.contains(&c.0)).map(|&(t, _, row)| (t, row)).collect();
    leave_queue_claimed(conn, backend, &left).await?;
    Ok(inserted)
}

impl Store {
    /// Claim up to `count` tasks from one TaskHub for `service` (route
    /// C10). Returns the claimed task keys followed by `None` up to `count`; a key that is
    /// not a TaskHub's, or an unknown hub, yields only `None`s. Claimed tasks are
    /// `running` with a claim by the service.
    ///
    /// The hub's own weight is not consulted (the caller named the hub); ACTIONS weights
    /// are. Failure accounting is not consulted either, as upstream (only the claim across
    /// scopes denies).
    ///
    /// Errors ([`StoreError::Invalid`]): an empty protocol list or an invalid protocol
    /// name; a service that is not registered (`compute service <id> is not registered`) —
    /// deliberate fix of an upstream quirk, where upstream hands out the selected keys without
    /// claiming them.
    ///
    /// Concurrent calls for the same hub are combined into one transaction (see the module
    /// documentation).
    pub async fn claim_taskhub_tasks(
        &self,
        hub: &ScopedKey,
        service: &ComputeServiceId,
        count: usize,
        protocols: Option<&[String]>,
    ) -> Result<Vec<Option<ScopedKey>>> {
        check_count(count)?;
        let protocols = protocol_filter(protocols)?.map(|p| json_array(p.iter().map(String::as_str)));
        let key = format!("{}|{}|hub {hub}|{}", self.backend().name(), self.location(), protocols.as_deref().unwrap_or("*"));
        let target = Target::Hub { hub: hub.clone(), protocols };
        match self.combined(&target, &key, service, count).await? {
            ClaimOutcome::Claimed(v) => Ok(v),
            ClaimOutcome::Denied => Ok(vec![None; count]),
        }
    }

    /// Claim up to `count` tasks across scopes for `service`.
    ///
    /// `scopes` is the search space (the API layer has already intersected the requested
    /// scopes with the caller's token scopes); an empty list claims nothing. Hubs whose
    /// scope is covered by any of `exclude` are dropped. Then, while fewer than `count`
    /// tasks are claimed: a hub is chosen at random with probability proportional to its
    /// weight among the hubs that have claimable tasks and were not tried yet in this call
    /// (weight-0 hubs are never chosen), and up to the remaining count is claimed from it
    /// by upstream's weighted sampling. Network state is not consulted.
    ///
    /// Restricting the draw to hubs with claimable tasks gives the same distribution as
    /// upstream's draw over all hubs that skips empty ones (the relative order of any
    /// subset in a weighted sampling without replacement is itself such a sampling), and
    /// saves the empty round trips. See the module documentation for the hub pool and for
    /// how concurrent calls for the same search space are combined into one transaction.
    ///
    /// [`ClaimOutcome::Denied`] if the service has more than `max_failures` failures newer
    /// than now − `forgive_seconds` (older ones are pruned); otherwise
    /// [`ClaimOutcome::Claimed`] with the claimed keys followed by `None` up to `count`.
    ///
    /// Errors ([`StoreError::Invalid`]): protocol list errors as in
    /// [`Store::claim_taskhub_tasks`]; a service that is not registered — deliberate fix
    /// of an upstream quirk (upstream answers with a server error; an expired service is told
    /// clearly, and never handed tasks).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_tasks(
        &self,
        scopes: &[Scope],
        exclude: &[Scope],
        service: &ComputeServiceId,
        count: usize,
        protocols: Option<&[String]>,
        forgive_seconds: i64,
        max_failures: i64,
    ) -> Result<ClaimOutcome> {
        check_count(count)?;
        let protocol_names = protocol_filter(protocols)?;
        cutoff(0, forgive_seconds, "the failure forgive time")?;
        let space = ClaimSpace {
            scopes: minimise(scopes),
            exclude: minimise(exclude),
            protocols: protocol_names.as_ref().map(|p| json_array(p.iter().map(String::as_str))),
            forgive_seconds,
            max_failures,
        };
        let key = space.key(self);
        self.combined(&Target::Scopes(space), &key, service, count).await
    }

    /// Queue a claim with the combiner of `key` and answer it from whichever batch runs it
    /// (see the module documentation).
    async fn combined(&self, target: &Target, key: &str, service: &ComputeServiceId, count: usize) -> Result<ClaimOutcome> {
        let combiner = combiner(key);
        let mut request = Some(ClaimRequest { service: service.clone(), count, reply: None });
        loop {
            let (tx, mut rx) = tokio::sync::oneshot::channel();
            if let Some(mut r) = request.take() {
                r.reply = Some(tx);
                combiner.queue().push(r);
            }
            {
                let _permit = combiner.permits.acquire().await.map_err(|_| StoreError::Unavailable("claim combiner closed".into()))?;
                match rx.try_recv() {
                    Ok(answer) => return answer,
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        // the batch that held our request was abandoned: submit it again
                        request = Some(ClaimRequest { service: service.clone(), count, reply: None });
                        continue;
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                }
                let batch: Vec<ClaimRequest> = std::mem::take(&mut *combiner.queue());
                let batch: Vec<ClaimRequest> = batch.into_iter().filter(|r| r.reply.as_ref().is_some_and(|s| !s.is_closed())).collect();
                if !batch.is_empty() {
                    // the batch runs in its own task: if this caller goes away (a client
                    // disconnects), the batch still completes and answers the others
                    let (store, target, key) = (self.clone(), target.clone(), key.to_string());
                    let _ = tokio::spawn(async move { store.claim_batch(&target, &key, batch).await }).await;
                }
            }
            // answered by the batch just run, or in a batch another caller is running
            match rx.await {
                Ok(answer) => return answer,
                Err(_) => request = Some(ClaimRequest { service: service.clone(), count, reply: None }),
            }
        }
    }

    /// Run a batch of claim requests for one search space in one transaction and answer
    /// each: registration and failure checks per request, then
    /// rounds in which every unsatisfied request draws a hub by weight among the pooled
    /// hubs it has not tried; requests that drew the same hub are served by one selection
    /// of their combined count, whose tasks are dealt out in random order.
    async fn claim_batch(&self, target: &Target, key: &str, mut batch: Vec<ClaimRequest>) {
        let result = match target {
            Target::Scopes(space) => self.claim_batch_tx(space, key, &batch).await,
            Target::Hub { hub, protocols } => self.hub_batch_tx(hub, protocols.as_deref(), &batch).await,
        };
        match result {
            Ok(answers) => {
                for (r, a) in batch.iter_mut().zip(answers) {
                    if let Some(reply) = r.reply.take() {
                        let _ = reply.send(a);
                    }
                }
            }
            Err(e) => {
                // a store that cannot be reached now fails the claims queued behind this
                // batch too: each would otherwise wait out its own pool timeout in turn
                // (a 503 after several timeouts), to the same answer
                if matches!(e, StoreError::Unavailable(_)) {
                    batch.extend(std::mem::take(&mut *combiner(key).queue()));
                }
                for r in batch.iter_mut() {
                    if let Some(reply) = r.reply.take() {
                        let _ = reply.send(Err(e.replicate()));
                    }
                }
            }
        }
    }

    async fn claim_batch_tx(&self, space: &ClaimSpace, key: &str, batch: &[ClaimRequest]) -> Result<Vec<Result<ClaimOutcome>>> {
        let forgive = cutoff(crate::now_micros(), space.forgive_seconds, "the failure forgive time")?;
        let mut tx = self.begin_write().await?;
        claim_plans(&mut tx, self.backend).await?;
        let services = service_rows(&mut tx, self.backend, batch.iter().map(|r| &r.service), forgive).await?;
        let mut answers: Vec<Option<Result<ClaimOutcome>>> = Vec::with_capacity(batch.len());
        let mut active: Vec<Active> = Vec::new();
        let mut checked: HashMap<i64, bool> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            let Some(&row) = services.get(&r.service.to_string()) else {
                answers.push(Some(Err(not_registered(&r.service))));
                continue;
            };
            let allowed = match checked.get(&row.0) {
                Some(&ok) => ok,
                None => {
                    let ok = can_claim_row(&mut tx, row, forgive, space.max_failures).await?;
                    checked.insert(row.0, ok);
                    ok
                }
            };
            if !allowed {
                answers.push(Some(Ok(ClaimOutcome::Denied)));
                continue;
            }
            answers.push(None);
            if r.count > 0 && !space.scopes.is_empty() {
                active.push(Active { index: i, service_row: row.0, remaining: r.count, tried: HashSet::new(), claimed: Vec::new() });
            }
        }

        let mut refreshed = false;
        let mut rng = StdRng::from_entropy();
        let hints = hint_scope(self);
        loop {
            let mut by_hub: HashMap<i64, Vec<usize>> = HashMap::new();
            let mut need_refresh = false;
            for (ai, a) in active.iter_mut().enumerate().filter(|(_, a)| a.remaining > 0) {
                match pool_pick(key, &a.tried, refreshed, &mut rng) {
                    Pick::Hub(h) => by_hub.entry(h).or_default().push(ai),
                    Pick::Exhausted | Pick::Stale if refreshed => a.remaining = 0,
                    Pick::Exhausted | Pick::Stale => need_refresh = true,
                }
            }
            if need_refresh {
                let hubs = claimable_hubs(&mut tx, self.backend, &space.scopes, &space.exclude, space.protocols.as_deref()).await?;
                pool_store(key, hubs);
                refreshed = true;
                continue;
            }
            if by_hub.is_empty() {
                break;
            }
            let rounds: Vec<(i64, Vec<usize>)> = by_hub.into_iter().collect();
            let wants: Vec<(i64, usize)> =
                rounds.iter().map(|(hub, takers)| (*hub, takers.iter().map(|&ai| active[ai].remaining).sum())).collect();
            let selections = select_from_hubs(&mut tx, self.backend, &wants, space.protocols.as_deref(), true, hints.as_deref()).await?;
            let mut pairs = Vec::new();
            let mut dealt: Vec<(usize, Claimed)> = Vec::new();
            for ((hub, mut takers), (mut chosen, drained)) in rounds.into_iter().zip(selections) {
                if drained {
                    pool_evict(key, hub);
                }
                // deal the tasks out in random order (the most urgent ones are all among them)
                chosen.shuffle(&mut rng);
                takers.shuffle(&mut rng);
                let mut tasks = chosen.into_iter();
                for &ai in &takers {
                    let a = &mut active[ai];
                    a.tried.insert(hub);
                    for c in tasks.by_ref().take(a.remaining) {
                        pairs.push((c.id, a.service_row, c.row));
                        dealt.push((ai, c));
                    }
                }
            }
            let claimed = record_claims(&mut tx, self.backend, &pairs).await?;
            for (ai, c) in dealt {
                if claimed.contains(&c.id) {
                    let a = &mut active[ai];
                    a.remaining -= 1;
                    a.claimed.push(c.sk);
                }
            }
        }
        tx.commit().await?;
        for a in active {
            answers[a.index] = Some(Ok(ClaimOutcome::Claimed(a.claimed.into_iter().map(Some).collect())));
        }
        Ok(batch
            .iter()
            .zip(answers)
            .map(|(r, a)| match a.unwrap_or_else(|| Ok(ClaimOutcome::Claimed(Vec::new()))) {
                Ok(ClaimOutcome::Claimed(mut v)) => {
                    v.resize(r.count, None);
                    Ok(ClaimOutcome::Claimed(v))
                }
                other => other,
            })
            .collect())
    }

    /// Run a batch of C10 claims on one hub in one transaction: registration checks per
    /// request, one selection of the combined count from the hub (its own weight not
    /// consulted), the tasks dealt out in random order.
    async fn hub_batch_tx(&self, hub: &ScopedKey, protocols: Option<&str>, batch: &[ClaimRequest]) -> Result<Vec<Result<ClaimOutcome>>> {
        let mut tx = self.begin_write().await?;
        claim_plans(&mut tx, self.backend).await?;
        let services = service_rows(&mut tx, self.backend, batch.iter().map(|r| &r.service), 0).await?;
        let hub_id = match hub.qualname() {
            "TaskHub" => network_id_by_token(&mut tx, hub.gufe_key().token(), hub.scope()).await?,
            _ => None,
        };
        let mut takers: Vec<(usize, i64)> = Vec::new();
        let mut answers: Vec<Result<Vec<ScopedKey>>> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            match services.get(&r.service.to_string()) {
                None => answers.push(Err(not_registered(&r.service))),
                Some(&(row, _, _)) => {
                    answers.push(Ok(Vec::new()));
                    takers.extend(std::iter::repeat_n((i, row), r.count));
                }
            }
        }
        if let (Some(hub_id), false) = (hub_id, takers.is_empty()) {
            let hints = hint_scope(self);
            let (mut chosen, _) = select_from_hubs(&mut tx, self.backend, &[(hub_id, takers.len())], protocols, false, hints.as_deref())
                .await?
                .pop()
                .unwrap_or_default();
            let mut rng = StdRng::from_entropy();
            chosen.shuffle(&mut rng);
            takers.shuffle(&mut rng);
            let dealt: Vec<((usize, i64), Claimed)> = takers.into_iter().zip(chosen).collect();
            let pairs: Vec<(i64, i64, QueueRowRead)> = dealt.iter().map(|((_, row), c)| (c.id, *row, c.row)).collect();
            let claimed = record_claims(&mut tx, self.backend, &pairs).await?;
            for ((i, _), c) in dealt {
                if let (true, Ok(v)) = (claimed.contains(&c.id), &mut answers[i]) {
                    v.push(c.sk);
                }
            }
        }
        tx.commit().await?;
        Ok(batch
            .iter()
            .zip(answers)
            .map(|(r, a)| {
                a.map(|keys| {
                    let mut v: Vec<Option<ScopedKey>> = keys.into_iter().map(Some).collect();
                    v.resize(r.count, None);
                    ClaimOutcome::Claimed(v)
                })
            })
            .collect())
    }
}

/// Plans of claim statements that do not depend on planner statistics (PostgreSQL): a
/// freshly loaded store has none (autovacuum analyses later), and without them the
/// planner believes a hub holds a handful of rows and reads all of them through a bitmap
/// scan and a sort — a claim then costs the whole hub. Statistics taken at the wrong
/// moment mislead it the other way: analysed while every task was claimed, then the
/// claims given back (services deregistered en masse), the planner believes no task can
/// pass the "not claimed" test, and joins the queue to a materialised anti-join of every
/// task with every claim (measured by `bench scaleout`: 80–130 ms per claim instead of
/// 0.3 ms). With bitmap scans, explicit sorts, merge and hash joins and materialisation
/// ruled out for the claim transaction, the only reasonable plan left reads the queue's
/// index in claim order, looks each task and its claim up by key, and stops at the
/// limit. `SET LOCAL`: the settings end with the transaction.
pub(crate) async fn claim_plans(conn: &mut AnyConnection, backend: Backend) -> Result<()> {
    if backend == Backend::Postgres {
        sqlx::query(
            "SELECT CAST(set_config('enable_bitmapscan', 'off', true) || set_config('enable_sort', 'off', true) \
             || set_config('enable_mergejoin', 'off', true) || set_config('enable_hashjoin', 'off', true) \
             || set_config('enable_material', 'off', true) AS TEXT)",
        )
        .fetch_one(&mut *conn)
        .await?;
    }
    Ok(())
}

fn check_count(count: usize) -> Result<()> {
    if count > MAX_CLAIM_COUNT {
        return Err(StoreError::Invalid(format!("count must be at most {MAX_CLAIM_COUNT}, got {count}")));
    }
    Ok(())
}

fn not_registered(service: &ComputeServiceId) -> StoreError {
    StoreError::Invalid(format!("compute service {service} is not registered"))
}

/// Hubs (network row id, weight) in `scopes`, not covered by `exclude`, with weight > 0
/// and at least one claimable task: one statement, one aggregated row back. The EXISTS
/// carries `LIMIT 1 OFFSET 0` so PostgreSQL keeps it a per-hub probe that stops at the
/// first claimable row (a plain EXISTS becomes a join over every queued row).
async fn claimable_hubs(
    conn: &mut AnyConnection,
    backend: Backend,
    scopes: &[Scope],
    exclude: &[Scope],
    protocols: Option<&str>,
) -> Result<Vec<(i64, f64)>> {
    let mut args = Vec::new();
    let include = scopes_condition("o", scopes, &mut args);
    let excluded = if exclude.is_empty() { "1 = 0".to_string() } else { scopes_condition("o", exclude, &mut args) };
    let protocols_param = protocols.map(|p| {
        args.push(Arg::from(p));
        args.len()
    });
    let sql = dialect(
        backend,
        &format!(
            "{} FROM network n JOIN gufe_object o ON o.id = n.id WHERE n.weight > 0 AND ({include}) AND NOT ({excluded}) \
             AND EXISTS (SELECT 1 FROM task_queue q JOIN task t ON t.id = q.task_id WHERE q.network_id = n.id AND {} LIMIT 1 OFFSET 0)",
            json_rows_select(backend, "n.id, n.weight"),
            claimable_condition(backend, protocols_param)
        ),
    );
    fetch_json_rows(conn, &sql, &args).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `record_claims` moves tasks to `running` without `apply_status`, which would do
    /// nothing more for that transition than set the status and take the tasks out of the
    /// claim queue.
    #[test]
    fn running_has_no_other_effect() {
        use alchemiscale_model::status::{transition_allowed, transition_effects};
        use alchemiscale_model::TaskStatus::{Running, Waiting};
        let e = transition_effects(Running);
        assert!(!e.drop_claim && !e.drop_actions && !e.drop_applies && !e.cascade_to_descendants);
        assert!(transition_allowed(Waiting, Running));
    }

    #[test]
    fn protocol_filters() {
        assert_eq!(protocol_filter(None).unwrap(), None);
        assert!(matches!(protocol_filter(Some(&[])), Err(StoreError::Invalid(m)) if m == EMPTY_PROTOCOLS_ERROR));
        for bad in ["", "1abc", "a-b", "a b", "é"] {
            assert!(
                matches!(protocol_filter(Some(&[bad.to_string()])), Err(StoreError::Invalid(m)) if m == PROTOCOL_NAME_ERROR),
                "{bad:?}"
            );
        }
        let ok = protocol_filter(Some(&["b_1".to_string(), "A".to_string(), "b_1".to_string()])).unwrap().unwrap();
        assert_eq!(ok, vec!["A".to_string(), "b_1".to_string()]);
    }
}
