//! The user-facing API: routes U1–U62, wire-compatible with alchemiscale
//! 0.8's `AlchemiscaleClient`.
//!
//! Deliberate differences from upstream, each fixing a known upstream quirk (see docs/compatibility.md): bad input and missing objects answer 400/422 instead of 500 (W2); bulk getters
//! return `null` entries instead of failing (W1); bulk task creation keeps input order
//! and each transformation's scope (W4); actioning reports already-actioned tasks (Q7)
//! and validates weights before changing anything (W12); status setters return exactly
//! one entry per input (Q5); `org=*&campaign=x` is rejected (W6); an identity may read
//! only its own scopes unless it is an admin (W9).

use std::collections::BTreeMap;

use alchemiscale_model::chain::KeyedChain;
use alchemiscale_model::json::{self, Value};
use alchemiscale_model::{NetworkState, Scope, ScopeDict, ScopedKey, ScopedKeyDict, TaskStatus};
use alchemiscale_store::tasks::{TaskRequest, Weights};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{authorize_all, path_sk, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{parse_sk, parse_sk_dicts, parse_sks, scope_error, Body, Params};
use crate::AppState;

type JsonResult = ApiResult<Json<serde_json::Value>>;

/// The largest `count` accepted when creating tasks for one transformation.
pub const MAX_TASKS_PER_REQUEST: i64 = 100_000;

fn strings(keys: Vec<ScopedKey>) -> Json<serde_json::Value> {
    Json(json!(keys.iter().map(ToString::to_string).collect::<Vec<_>>()))
}

/// Keys, or null where there is none, as the JSON list both APIs answer with.
pub(crate) fn opt_strings(keys: Vec<Option<ScopedKey>>) -> Json<serde_json::Value> {
    Json(json!(keys.iter().map(|k| k.as_ref().map(ToString::to_string)).collect::<Vec<_>>()))
}

/// A body that is already JSON text (keyed chains are stored as CPython JSON).
pub struct RawJson(pub String);

impl IntoResponse for RawJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

fn network_key(sk: &ScopedKey, msg: &str) -> ApiResult<()> {
    if sk.qualname() == "AlchemicalNetwork" {
        Ok(())
    } else {
        Err(ApiError::bad_request(msg))
    }
}

const NOT_A_NETWORK: &str = "`network` ScopedKey does not correspond to an `AlchemicalNetwork`";
const NOT_A_NETWORK_WEIGHT: &str = "a `networks` ScopedKey does not correspond to an `AlchemicalNetwork`";

fn parse_task_status(s: &str) -> ApiResult<TaskStatus> {
    s.parse().map_err(|_| ApiError::bad_request(format!("'{s}' is not a valid TaskStatusEnum")))
}

/// Keys the caller may see, others replaced by None (bulk task rule B).
fn visible(caller: &Caller, keys: Vec<ScopedKey>) -> Vec<Option<ScopedKey>> {
    keys.into_iter().map(|k| caller.authorize(k.scope()).ok().map(|_| k)).collect()
}

/// All routes of the user API with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    crate::service::router()
        .routes(routes!(exists))
        .routes(routes!(create_network, query_networks))
        .routes(routes!(set_networks_state))
        .routes(routes!(get_networks_state))
        .routes(routes!(query_transformations))
        .routes(routes!(query_chemicalsystems))
        .routes(routes!(query_tasks))
        .routes(routes!(network_transformations))
        .routes(routes!(transformation_networks))
        .routes(routes!(network_chemicalsystems))
        .routes(routes!(chemicalsystem_networks))
        .routes(routes!(transformation_chemicalsystems))
        .routes(routes!(chemicalsystem_transformations))
        .routes(routes!(get_network))
        .routes(routes!(get_transformation))
        .routes(routes!(get_chemicalsystem))
        .routes(routes!(create_tasks))
        .routes(routes!(create_transformations_tasks))
        .routes(routes!(network_tasks))
        .routes(routes!(task_networks))
        .routes(routes!(transformation_tasks))
        .routes(routes!(task_transformation))
        .routes(routes!(scope_status))
        .routes(routes!(network_status))
        .routes(routes!(networks_status))
        .routes(routes!(transformation_status))
        .routes(routes!(network_actioned_tasks))
        .routes(routes!(networks_actioned_tasks))
        .routes(routes!(task_actioned_networks))
        .routes(routes!(action_tasks))
        .routes(routes!(cancel_tasks))
        .routes(routes!(get_network_weight, set_network_weight))
        .routes(routes!(get_networks_weight))
        .routes(routes!(set_networks_weight))
        .routes(routes!(get_tasks_priority))
        .routes(routes!(set_tasks_priority))
        .routes(routes!(get_tasks_status))
        .routes(routes!(set_tasks_status))
        .routes(routes!(set_task_status, get_task_status))
        .routes(routes!(add_restart_patterns))
        .routes(routes!(remove_restart_patterns))
        .routes(routes!(clear_restart_patterns))
        .routes(routes!(get_restart_patterns))
        .routes(routes!(set_restart_pattern_max_retries))
        .routes(routes!(transformation_results))
        .routes(routes!(transformation_failures))
        .routes(routes!(task_results))
        .routes(routes!(task_failures))
        .routes(routes!(get_result))
        .routes(routes!(set_network_strategy, get_network_strategy))
        .routes(routes!(get_strategy_state))
        .routes(routes!(get_strategy_status))
        .routes(routes!(wake_strategy))
}

// ---- service routes (U1–U5) ------------------------------------------------------------

// ---- existence and networks (U6–U9) -----------------------------------------------------

/// U6: is an object stored under exactly this ScopedKey?
#[utoipa::path(get, path = "/exists/{sk}", tag = "objects", params(("sk" = String, Path)))]
async fn exists(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = parse_sk(&raw).map_err(ApiError::as_unprocessable)?;
    caller.authorize(sk.scope())?;
    Ok(Json(json!(state.store().exists(&sk).await?)))
}

/// U7: submit a network (`{"network": <keyed chain>, "scope": {…}, "state": "active"}`,
/// gzip allowed) → its ScopedKey as an object.
#[utoipa::path(post, path = "/networks", tag = "networks")]
async fn create_network(State(state): State<AppState>, caller: Caller, Body(body): Body) -> JsonResult {
    let Value::Object(mut body) = body else {
        return Err(ApiError::unprocessable("body must be an object with `network`, `scope` and `state`"));
    };
    let scope_value = body.get("scope").ok_or_else(|| ApiError::unprocessable("missing `scope`"))?;
    let scope = json::from_value::<ScopeDict>(scope_value)
        .map_err(|e| ApiError::unprocessable(format!("invalid `scope`: {e}")))?
        .to_scope()
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    caller.authorize(&scope)?;
    if !scope.is_specific() {
        return Err(ApiError::unprocessable(format!(
            "scope '{scope}' is not specific: networks can only be submitted to scopes without wildcards"
        )));
    }
    let network_state = match body.get("state") {
        None | Some(Value::Null) => NetworkState::Active,
        Some(v) => {
            let s = v.as_str().unwrap_or("");
            s.parse::<NetworkState>().map_err(|_| {
                ApiError::unprocessable(format!("`state` = {s} must be one of the following: active, deleted, inactive, invalid"))
            })?
        }
    };
    let network = body.remove("network").ok_or_else(|| ApiError::unprocessable("missing `network`"))?;
    let chain = KeyedChain::from_value(network).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let created = state.store().create_network(&chain, &scope, network_state).await.map_err(|e| ApiError::from(e).as_unprocessable())?;
    Ok(Json(json!(created.network.to_dict())))
}

#[derive(Deserialize)]
struct NetworksStates {
    networks: Vec<String>,
    states: Vec<String>,
}

/// U8: set network states in bulk; per input the key, or null if unknown.
#[utoipa::path(post, path = "/bulk/networks/state/set", tag = "networks")]
async fn set_networks_state(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: NetworksStates = body.typed()?;
    if b.networks.len() != b.states.len() {
        return Err(ApiError::bad_request("networks and states must have the same length"));
    }
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    for n in &networks {
        network_key(n, NOT_A_NETWORK)?;
    }
    let mut changes = Vec::with_capacity(networks.len());
    for (n, s) in networks.into_iter().zip(&b.states) {
        let st: NetworkState = s.parse().map_err(|_| {
            ApiError::bad_request(format!("'{s}' is not a valid state. Valid values include: ['active', 'inactive', 'invalid', 'deleted']"))
        })?;
        changes.push((n, st));
    }
    Ok(opt_strings(state.store().set_network_states(&changes).await?))
}

#[derive(Deserialize)]
struct Networks {
    networks: Vec<String>,
}

/// U9: network states in bulk; null for unknown networks.
#[utoipa::path(post, path = "/bulk/networks/state/get", tag = "networks")]
async fn get_networks_state(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: Networks = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    let states = state.store().get_network_states(&networks).await?;
    Ok(Json(json!(states.iter().map(|s| s.map(|s| s.as_str())).collect::<Vec<_>>())))
}

// ---- queries (U10–U12, U24) ---------------------------------------------------------------

/// U10: networks in the caller's scopes; `name` and `state` are full-match regular
/// expressions (Rust `fancy-regex` syntax, which covers Java's for common patterns).
#[utoipa::path(get, path = "/networks", tag = "networks", params(("name" = Option<String>, Query), ("state" = Option<String>, Query), ("org" = Option<String>, Query), ("campaign" = Option<String>, Query), ("project" = Option<String>, Query)))]
async fn query_networks(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> JsonResult {
    let p = Params::from_query(q.as_deref());
    let spaces = caller.search_space(&p.scope()?);
    Ok(strings(state.store().query_networks(&spaces, p.get("name"), p.get("state")).await?))
}

/// U11: transformations in the caller's scopes, `name` matched exactly.
#[utoipa::path(get, path = "/transformations", tag = "transformations", params(("name" = Option<String>, Query), ("org" = Option<String>, Query), ("campaign" = Option<String>, Query), ("project" = Option<String>, Query)))]
async fn query_transformations(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> JsonResult {
    let p = Params::from_query(q.as_deref());
    let spaces = caller.search_space(&p.scope()?);
    Ok(strings(state.store().query_objects(&spaces, false, p.get("name")).await?))
}

/// U12: chemical systems in the caller's scopes, `name` matched exactly.
#[utoipa::path(get, path = "/chemicalsystems", tag = "chemicalsystems", params(("name" = Option<String>, Query), ("org" = Option<String>, Query), ("campaign" = Option<String>, Query), ("project" = Option<String>, Query)))]
async fn query_chemicalsystems(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> JsonResult {
    let p = Params::from_query(q.as_deref());
    let spaces = caller.search_space(&p.scope()?);
    Ok(strings(state.store().query_objects(&spaces, true, p.get("name")).await?))
}

/// U24: tasks in the caller's scopes, optionally of one status.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(("status" = Option<String>, Query), ("org" = Option<String>, Query), ("campaign" = Option<String>, Query), ("project" = Option<String>, Query)))]
async fn query_tasks(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> JsonResult {
    let p = Params::from_query(q.as_deref());
    let spaces = caller.search_space(&p.scope()?);
    Ok(strings(state.store().query_tasks(&spaces, p.get("status")).await?))
}

// ---- relationships (U13–U18) ----------------------------------------------------------

macro_rules! listing {
    ($name:ident, $path:literal, $tag:literal, $method:ident) => {
        #[utoipa::path(get, path = $path, tag = $tag, params(("sk" = String, Path)))]
        async fn $name(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
            let sk = path_sk(&caller, &raw)?;
            Ok(strings(state.store().$method(&sk).await?))
        }
    };
}

listing!(network_transformations, "/networks/{sk}/transformations", "networks", network_transformations);
listing!(transformation_networks, "/transformations/{sk}/networks", "transformations", transformation_networks);
listing!(network_chemicalsystems, "/networks/{sk}/chemicalsystems", "networks", network_chemicalsystems);
listing!(chemicalsystem_networks, "/chemicalsystems/{sk}/networks", "chemicalsystems", chemicalsystem_networks);
listing!(transformation_chemicalsystems, "/transformations/{sk}/chemicalsystems", "transformations", transformation_chemicalsystems);
listing!(chemicalsystem_transformations, "/chemicalsystems/{sk}/transformations", "chemicalsystems", chemicalsystem_transformations);

// ---- object retrieval (U19–U21) -------------------------------------------------------

async fn object_chain(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<RawJson> {
    let sk = path_sk(caller, raw)?;
    Ok(RawJson(state.store().get_chain(&sk).await?))
}

/// U19: a network's keyed chain, exactly as submitted.
#[utoipa::path(get, path = "/networks/{sk}", tag = "networks", params(("sk" = String, Path)))]
async fn get_network(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> ApiResult<RawJson> {
    object_chain(&state, &caller, &raw).await
}

/// U20: a transformation's keyed chain.
#[utoipa::path(get, path = "/transformations/{sk}", tag = "transformations", params(("sk" = String, Path)))]
async fn get_transformation(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> ApiResult<RawJson> {
    object_chain(&state, &caller, &raw).await
}

/// U21: a chemical system's keyed chain.
#[utoipa::path(get, path = "/chemicalsystems/{sk}", tag = "chemicalsystems", params(("sk" = String, Path)))]
async fn get_chemicalsystem(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> ApiResult<RawJson> {
    object_chain(&state, &caller, &raw).await
}

// ---- task creation (U22–U23) ------------------------------------------------------------

#[derive(Deserialize)]
struct CreateTasks {
    #[serde(default)]
    extends: Option<ScopedKeyDict>,
    count: i64,
}

/// U22: create `count` tasks for a transformation, optionally extending a task.
#[utoipa::path(post, path = "/transformations/{sk}/tasks", tag = "tasks", params(("sk" = String, Path)))]
async fn create_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let tf = path_sk(&caller, &raw)?;
    let b: CreateTasks = body.typed()?;
    if b.count > MAX_TASKS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("count must be at most {MAX_TASKS_PER_REQUEST}")));
    }
    let extends = b.extends.as_ref().map(|d| parse_sk_dicts(std::slice::from_ref(d)).map(|mut v| v.remove(0))).transpose()?;
    let requests: Vec<TaskRequest> =
        (0..b.count.max(0)).map(|_| TaskRequest { transformation: tf.clone(), extends: extends.clone() }).collect();
    Ok(strings(state.store().create_tasks(&requests, Some(&caller.identifier)).await?))
}

#[derive(Deserialize)]
struct BulkCreateTasks {
    transformations: Vec<String>,
    #[serde(default)]
    extends: Option<Vec<Option<String>>>,
}

/// U23: one task per listed transformation (repeat a key for several), in input order.
#[utoipa::path(post, path = "/bulk/transformations/tasks/create", tag = "tasks")]
async fn create_transformations_tasks(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: BulkCreateTasks = body.typed()?;
    if b.transformations.len() as i64 > MAX_TASKS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("at most {MAX_TASKS_PER_REQUEST} tasks can be created per request")));
    }
    let tfs = parse_sks(&b.transformations)?;
    authorize_all(&caller, &tfs)?;
    let extends: Vec<Option<ScopedKey>> = match &b.extends {
        None => vec![None; tfs.len()],
        Some(e) if e.len() != tfs.len() => {
            return Err(ApiError::bad_request("`extends` must either be `None` or have the same length as `transformations`"))
        }
        Some(e) => e.iter().map(|x| x.as_deref().filter(|s| !s.is_empty()).map(parse_sk).transpose()).collect::<ApiResult<_>>()?,
    };
    let requests: Vec<TaskRequest> =
        tfs.into_iter().zip(extends).map(|(transformation, extends)| TaskRequest { transformation, extends }).collect();
    Ok(strings(state.store().create_tasks(&requests, Some(&caller.identifier)).await?))
}

// ---- task listings (U25–U27, U47) -------------------------------------------------------

/// U25: tasks of a network's transformations, optionally of one status.
#[utoipa::path(get, path = "/networks/{sk}/tasks", tag = "networks", params(("sk" = String, Path), ("status" = Option<String>, Query)))]
async fn network_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, RawQuery(q): RawQuery) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let p = Params::from_query(q.as_deref());
    let status = p.get("status").map(parse_task_status).transpose()?;
    Ok(strings(state.store().network_tasks(&sk, status).await?))
}

/// U26: networks containing the task's transformation.
#[utoipa::path(get, path = "/tasks/{sk}/networks", tag = "tasks", params(("sk" = String, Path)))]
async fn task_networks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(strings(state.store().task_networks(&sk).await?))
}

/// U27: tasks of a transformation as a list or as a graph task → extended task.
#[utoipa::path(get, path = "/transformations/{sk}/tasks", tag = "transformations", params(("sk" = String, Path), ("extends" = Option<String>, Query), ("return_as" = Option<String>, Query), ("status" = Option<String>, Query)))]
async fn transformation_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, RawQuery(q): RawQuery) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let p = Params::from_query(q.as_deref());
    let status = p.get("status").map(parse_task_status).transpose()?;
    let return_as = p.get("return_as").unwrap_or("list");
    if return_as != "list" && return_as != "graph" {
        return Err(ApiError::bad_request(format!("`return_as` takes 'list' or 'graph', not '{return_as}'")));
    }
    let extends = p.get("extends").map(parse_sk).transpose()?;
    let tasks = state.store().transformation_tasks(&sk, extends.as_ref(), status).await?;
    if return_as == "list" {
        Ok(strings(tasks.into_iter().map(|(t, _)| t).collect()))
    } else {
        let graph: BTreeMap<String, Option<String>> = tasks.into_iter().map(|(t, e)| (t.to_string(), e.map(|e| e.to_string()))).collect();
        Ok(Json(json!(graph)))
    }
}

/// U47: the transformation a task performs.
#[utoipa::path(get, path = "/tasks/{sk}/transformation", tag = "tasks", params(("sk" = String, Path)))]
async fn task_transformation(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().get_task_transformation(&sk).await?.to_string())))
}

// ---- status summaries (U28–U31) --------------------------------------------------------

/// U28: task status counts over a (possibly wildcard) scope, for networks whose state
/// matches `network_state` (a full-match regular expression; absent = any state).
#[utoipa::path(get, path = "/scopes/{scope}/status", tag = "status", params(("scope" = String, Path), ("network_state" = Option<String>, Query)))]
async fn scope_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, RawQuery(q): RawQuery) -> JsonResult {
    let scope: Scope = raw.parse().map_err(|_| scope_error())?;
    let p = Params::from_query(q.as_deref());
    let spaces = caller.search_space(&scope);
    Ok(Json(json!(state.store().scope_status(&spaces, p.get("network_state")).await?)))
}

/// U29: task status counts over a network's transformations.
#[utoipa::path(get, path = "/networks/{sk}/status", tag = "status", params(("sk" = String, Path)))]
async fn network_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let mut counts = state.store().network_status(std::slice::from_ref(&sk)).await?;
    Ok(Json(json!(counts.remove(0))))
}

/// U30: U29 for several networks.
#[utoipa::path(post, path = "/bulk/networks/status", tag = "status")]
async fn networks_status(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: Networks = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    Ok(Json(json!(state.store().network_status(&networks).await?)))
}

/// U31: task status counts for a transformation.
#[utoipa::path(get, path = "/transformations/{sk}/status", tag = "status", params(("sk" = String, Path)))]
async fn transformation_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().transformation_status(&sk).await?)))
}

// ---- actioning, weights, cancelling (U32–U40) ---------------------------------------------

#[derive(Deserialize)]
struct TaskWeightsFlag {
    task_weights: bool,
}

fn actioned_json(pairs: Vec<(ScopedKey, f64)>, weights: bool) -> serde_json::Value {
    if weights {
        json!(pairs.into_iter().map(|(k, w)| (k.to_string(), w)).collect::<BTreeMap<_, _>>())
    } else {
        json!(pairs.into_iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>())
    }
}

/// U32: tasks actioned on a network's hub (with weights if `task_weights`).
#[utoipa::path(post, path = "/networks/{sk}/tasks/actioned", tag = "actions", params(("sk" = String, Path)))]
async fn network_actioned_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let b: TaskWeightsFlag = body.typed()?;
    Ok(Json(actioned_json(state.store().network_actioned_tasks(&sk).await?, b.task_weights)))
}

#[derive(Deserialize)]
struct NetworksWeightsFlag {
    networks: Vec<String>,
    task_weights: bool,
}

/// U33: U32 for several networks.
#[utoipa::path(post, path = "/bulk/networks/tasks/actioned", tag = "actions")]
async fn networks_actioned_tasks(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: NetworksWeightsFlag = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    let mut out = Vec::with_capacity(networks.len());
    for n in &networks {
        network_key(n, NOT_A_NETWORK)?;
        out.push(actioned_json(state.store().network_actioned_tasks(n).await?, b.task_weights));
    }
    Ok(Json(json!(out)))
}

/// U34: networks whose hubs action a task (with the task's weight there).
#[utoipa::path(post, path = "/tasks/{sk}/networks/actioned", tag = "actions", params(("sk" = String, Path)))]
async fn task_actioned_networks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let b: TaskWeightsFlag = body.typed()?;
    Ok(Json(actioned_json(state.store().task_actioned_networks(&sk).await?, b.task_weights)))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WeightArg {
    One(f64),
    Many(Vec<f64>),
}

#[derive(Deserialize)]
struct ActionTasks {
    tasks: Vec<ScopedKeyDict>,
    #[serde(default)]
    weight: Option<WeightArg>,
}

/// U35: action tasks on a network's hub; per input the key if actioned there after the
/// call, else null. Weights are validated before anything changes.
#[utoipa::path(post, path = "/networks/{sk}/tasks/action", tag = "actions", params(("sk" = String, Path)))]
async fn action_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let ActionTasks { tasks, weight } = body.typed()?;
    drop(body); // large action lists: hold one form of them at a time
    let keys = parse_sk_dicts(&tasks)?;
    drop(tasks);
    let tasks = visible(&caller, keys);
    let weights = weight.map(|w| match w {
        WeightArg::One(w) => Weights::All(w),
        WeightArg::Many(ws) => Weights::Each(ws),
    });
    Ok(opt_strings(state.store().action_tasks(&sk, &tasks, weights).await?))
}

#[derive(Deserialize)]
struct TasksBody {
    tasks: Vec<ScopedKeyDict>,
}

/// U40: remove tasks from a network's hub; per input the key if it was actioned there.
#[utoipa::path(post, path = "/networks/{sk}/tasks/cancel", tag = "actions", params(("sk" = String, Path)))]
async fn cancel_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let b: TasksBody = body.typed()?;
    let tasks = visible(&caller, parse_sk_dicts(&b.tasks)?);
    Ok(opt_strings(state.store().cancel_tasks(&sk, &tasks).await?))
}

/// U36: a network's TaskHub weight (null if the network is unknown).
#[utoipa::path(get, path = "/networks/{sk}/weight", tag = "weights", params(("sk" = String, Path)))]
async fn get_network_weight(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    Ok(Json(json!(state.store().get_network_weights(std::slice::from_ref(&sk)).await?[0])))
}

/// U38: set a network's TaskHub weight; the body is a bare JSON number.
#[utoipa::path(post, path = "/networks/{sk}/weight", tag = "weights", params(("sk" = String, Path)))]
async fn set_network_weight(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, Body(body): Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let weight = match &body {
        Value::Number(n) => n.as_f64(),
        _ => return Err(ApiError::body_field("float_type", "weight", "Input should be a valid number")),
    };
    if !(0.0..=1.0).contains(&weight) {
        return Err(ApiError::bad_request("all `weights` must be between 0 and 1 (inclusive)"));
    }
    network_key(&sk, NOT_A_NETWORK_WEIGHT)?;
    Ok(opt_strings(state.store().set_network_weights(&[(sk, weight)]).await?)
        .0
        .get(0)
        .cloned()
        .map(Json)
        .unwrap_or(Json(serde_json::Value::Null)))
}

/// U37: TaskHub weights of several networks (null for unknown ones).
#[utoipa::path(post, path = "/bulk/networks/weight/get", tag = "weights")]
async fn get_networks_weight(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: Networks = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    for n in &networks {
        network_key(n, NOT_A_NETWORK)?;
    }
    Ok(Json(json!(state.store().get_network_weights(&networks).await?)))
}

#[derive(Deserialize)]
struct NetworksWeights {
    networks: Vec<String>,
    weights: Vec<f64>,
}

/// U39: set TaskHub weights of several networks.
#[utoipa::path(post, path = "/bulk/networks/weight/set", tag = "weights")]
async fn set_networks_weight(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: NetworksWeights = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    if b.weights.iter().any(|w| !(0.0..=1.0).contains(w)) {
        return Err(ApiError::bad_request("all `weights` must be between 0 and 1 (inclusive)"));
    }
    for n in &networks {
        network_key(n, NOT_A_NETWORK_WEIGHT)?;
    }
    if networks.len() != b.weights.len() {
        return Err(ApiError::bad_request("length of `networks` and `weights` must be the same"));
    }
    let changes: Vec<(ScopedKey, f64)> = networks.into_iter().zip(b.weights).collect();
    Ok(opt_strings(state.store().set_network_weights(&changes).await?))
}

// ---- priorities and statuses (U41–U46) ----------------------------------------------------

/// U41: priorities of tasks (null for missing or unauthorised ones).
#[utoipa::path(post, path = "/bulk/tasks/priority/get", tag = "tasks")]
async fn get_tasks_priority(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: TasksBody = body.typed()?;
    let tasks = visible(&caller, parse_sk_dicts(&b.tasks)?);
    Ok(Json(json!(state.store().get_task_priority(&tasks).await?)))
}

/// U42: set the priority of tasks (1 ≤ priority ≤ 2^63−1; lower is more urgent).
#[utoipa::path(post, path = "/bulk/tasks/priority/set", tag = "tasks")]
async fn set_tasks_priority(State(state): State<AppState>, caller: Caller, Body(body): Body) -> JsonResult {
    let tasks_value = body.get("tasks").cloned().unwrap_or(Value::Null);
    let tasks: Vec<ScopedKeyDict> =
        json::from_value(&tasks_value).map_err(|e| ApiError::body_field("list_type", "tasks", e.to_string()))?;
    let priority = match body.get("priority") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) if p >= 1 => p,
            _ if n.is_integer() || n.as_f64().fract() == 0.0 => {
                return Err(ApiError::bad_request("priority must be between 1 and 2**63 - 1, inclusive"));
            }
            _ => return Err(ApiError::body_field("int_from_float", "priority", "Input should be a valid integer")),
        },
        None => return Err(ApiError::body_field("missing", "priority", "Field required")),
        _ => return Err(ApiError::body_field("int_type", "priority", "Input should be a valid integer")),
    };
    let tasks = visible(&caller, parse_sk_dicts(&tasks)?);
    Ok(opt_strings(state.store().set_task_priority(&tasks, priority).await?))
}

/// U43: statuses of tasks (null for missing or unauthorised ones).
#[utoipa::path(post, path = "/bulk/tasks/status/get", tag = "tasks")]
async fn get_tasks_status(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: TasksBody = body.typed()?;
    let tasks = visible(&caller, parse_sk_dicts(&b.tasks)?);
    let statuses = state.store().get_task_status(&tasks).await?;
    Ok(Json(json!(statuses.iter().map(|s| s.map(|s| s.as_str())).collect::<Vec<_>>())))
}

/// The statuses a user may set (route U44).
fn user_settable_status(s: &str) -> ApiResult<TaskStatus> {
    let status = parse_task_status(s)?;
    match status {
        TaskStatus::Waiting | TaskStatus::Invalid | TaskStatus::Deleted => Ok(status),
        other => Err(ApiError::bad_request(format!(
            "Cannot set status to 'TaskStatusEnum.{other}', must be one of 'waiting', 'invalid', 'deleted'"
        ))),
    }
}

#[derive(Deserialize)]
struct SetStatus {
    tasks: Vec<ScopedKeyDict>,
    status: String,
}

/// U44: set task statuses (only waiting, invalid, deleted); per input the key if the
/// transition was allowed, else null.
#[utoipa::path(post, path = "/bulk/tasks/status/set", tag = "tasks")]
async fn set_tasks_status(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: SetStatus = body.typed()?;
    let status = user_settable_status(&b.status)?;
    let tasks = visible(&caller, parse_sk_dicts(&b.tasks)?);
    Ok(opt_strings(state.store().set_task_status(&tasks, status, false).await?))
}

/// U45: set one task's status; the body is a bare JSON string.
#[utoipa::path(post, path = "/tasks/{sk}/status", tag = "tasks", params(("sk" = String, Path)))]
async fn set_task_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, Body(body): Body) -> JsonResult {
    let sk = parse_sk(&raw)?;
    let Value::String(s) = &body else { return Err(ApiError::body_field("string_type", "status", "Input should be a valid string")) };
    let status = user_settable_status(s)?;
    caller.authorize(sk.scope())?;
    let mut out = state.store().set_task_status(&[Some(sk)], status, false).await?;
    Ok(Json(json!(out.remove(0).map(|k| k.to_string()))))
}

/// U46: one task's status (null if unknown).
#[utoipa::path(get, path = "/tasks/{sk}/status", tag = "tasks", params(("sk" = String, Path)))]
async fn get_task_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let s = state.store().get_task_status(&[Some(sk)]).await?;
    Ok(Json(json!(s[0].map(|s| s.as_str()))))
}

// ---- restart patterns (U48–U52) --------------------------------------------------------

#[derive(Deserialize)]
struct AddPatterns {
    patterns: Vec<String>,
    num_allowed_restarts: i64,
}

/// U48: attach restart patterns (Python-style regular expressions, validated now) to a
/// network's hub with a retry budget; restart resolution runs at once.
#[utoipa::path(post, path = "/networks/{sk}/restartpatterns/add", tag = "restart patterns", params(("sk" = String, Path)))]
async fn add_restart_patterns(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let b: AddPatterns = body.typed()?;
    state.store().add_restart_patterns(&sk, &b.patterns, b.num_allowed_restarts).await?;
    Ok(Json(serde_json::Value::Null))
}

#[derive(Deserialize)]
struct Patterns {
    patterns: Vec<String>,
}

/// U49: detach restart patterns (unknown ones are ignored).
#[utoipa::path(post, path = "/networks/{sk}/restartpatterns/remove", tag = "restart patterns", params(("sk" = String, Path)))]
async fn remove_restart_patterns(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let b: Patterns = body.typed()?;
    state.store().remove_restart_patterns(&sk, &b.patterns).await?;
    Ok(Json(serde_json::Value::Null))
}

/// U50: detach every restart pattern (a state-changing GET, as upstream).
#[utoipa::path(get, path = "/networks/{sk}/restartpatterns/clear", tag = "restart patterns", params(("sk" = String, Path)))]
async fn clear_restart_patterns(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    state.store().clear_restart_patterns(&sk).await?;
    Ok(Json(json!([sk.to_string()])))
}

/// U51: restart patterns of several networks, keyed by network.
#[utoipa::path(post, path = "/bulk/networks/restartpatterns/get", tag = "restart patterns")]
async fn get_restart_patterns(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: Networks = body.typed()?;
    let networks = parse_sks(&b.networks)?;
    authorize_all(&caller, &networks)?;
    for n in &networks {
        network_key(n, NOT_A_NETWORK)?;
    }
    let patterns = state.store().get_restart_patterns(&networks).await?;
    let map: BTreeMap<String, Vec<(String, i64)>> = networks.iter().map(ToString::to_string).zip(patterns).collect();
    Ok(Json(json!(map)))
}

#[derive(Deserialize)]
struct MaxRetries {
    patterns: Vec<String>,
    max_retries: i64,
}

/// U52: change the retry budget of patterns (must be ≥ 1; upstream accepts anything).
#[utoipa::path(post, path = "/networks/{sk}/restartpatterns/maxretries", tag = "restart patterns", params(("sk" = String, Path)))]
async fn set_restart_pattern_max_retries(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    network_key(&sk, NOT_A_NETWORK)?;
    let b: MaxRetries = body.typed()?;
    state.store().set_restart_pattern_max_retries(&sk, &b.patterns, b.max_retries).await?;
    Ok(Json(serde_json::Value::Null))
}

// ---- result listings (U53, U54, U56, U57) -------------------------------------------------

macro_rules! results_listing {
    ($name:ident, $path:literal, $tag:literal, $method:ident, $ok:expr) => {
        #[utoipa::path(get, path = $path, tag = $tag, params(("sk" = String, Path)))]
        async fn $name(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
            let sk = path_sk(&caller, &raw)?;
            Ok(strings(state.store().$method(&sk, $ok).await?))
        }
    };
}

results_listing!(transformation_results, "/transformations/{sk}/results", "results", transformation_results, true);
results_listing!(transformation_failures, "/transformations/{sk}/failures", "results", transformation_results, false);
results_listing!(task_results, "/tasks/{sk}/results", "results", task_results, true);
results_listing!(task_failures, "/tasks/{sk}/failures", "results", task_results, false);

/// U55: one stored result, as `["<latin-1 string of the zstd blob>"]`. Both the result
/// reference and the transformation must be in the caller's scopes; the blob is checked
/// against the SHA-256 recorded at upload and streamed out.
#[utoipa::path(get, path = "/transformations/{sk}/{route}/{pdrr_sk}", tag = "results", params(("sk" = String, Path), ("route" = String, Path), ("pdrr_sk" = String, Path)))]
async fn get_result(
    State(state): State<AppState>,
    caller: Caller,
    Path((tf_raw, route, pdrr_raw)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    if route != "results" && route != "failures" {
        return Err(ApiError::bad_request(format!("`route` takes 'results' or 'failures', not '{route}'")));
    }
    let pdrr_sk = path_sk(&caller, &pdrr_raw)?;
    let _tf = path_sk(&caller, &tf_raw)?;
    let pdrr = state.store().get_pdrr(&pdrr_sk).await?.ok_or_else(ApiError::no_such_object)?;
    let blob = crate::results::blob(&state, &pdrr).await?;
    Ok(crate::results::latin1_json_response(axum::body::Bytes::from_static(b"[\""), blob, b"\"]"))
}

// ---- strategies (U58–U62) ------------------------------------------------------------

/// U58: set (or with `"strategy": null` remove) a network's strategy; the other members
/// build a fresh StrategyState (absent ones take their defaults).
#[utoipa::path(post, path = "/networks/{sk}/strategy", tag = "strategies", params(("sk" = String, Path)))]
async fn set_network_strategy(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, Body(body): Body) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    let Value::Object(mut body) = body else { return Err(ApiError::unprocessable("body must be an object with a `strategy` member")) };
    let strategy = body.remove("strategy").ok_or_else(|| ApiError::unprocessable("'strategy'"))?;
    let strategy_state: alchemiscale_store::strategy::StrategyState =
        json::from_value(&Value::Object(body)).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    strategy_state.validate().map_err(|e| ApiError::unprocessable(e.to_string()))?;
    network_key(&sk, NOT_A_NETWORK)?;
    let chain = match strategy {
        Value::Null => None,
        v => Some(KeyedChain::from_value(v).map_err(|e| ApiError::unprocessable(e.to_string()))?),
    };
    let stored = state.store().set_network_strategy(&sk, chain.as_ref(), strategy_state).await?;
    Ok(Json(json!(stored.map(|k| k.to_string()))))
}

/// U59: a network's strategy as a keyed chain, or null.
#[utoipa::path(get, path = "/networks/{sk}/strategy", tag = "strategies", params(("sk" = String, Path)))]
async fn get_network_strategy(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> ApiResult<RawJson> {
    let sk = path_sk(&caller, &raw)?;
    Ok(RawJson(state.store().get_network_strategy(&sk).await?.unwrap_or_else(|| "null".into())))
}

/// U60: the StrategyState of a network's strategy, or null.
#[utoipa::path(get, path = "/networks/{sk}/strategy/state", tag = "strategies", params(("sk" = String, Path)))]
async fn get_strategy_state(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().get_strategy_state(&sk).await?)))
}

/// U61: the strategy's status (`awake`, `dormant`, `error`), or null.
#[utoipa::path(get, path = "/networks/{sk}/strategy/status", tag = "strategies", params(("sk" = String, Path)))]
async fn get_strategy_status(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().get_strategy_status(&sk).await?.map(|s| s.as_str()))))
}

/// U62: wake a strategy (status awake, error cleared); null if there is none.
#[utoipa::path(post, path = "/networks/{sk}/strategy/awake", tag = "strategies", params(("sk" = String, Path)))]
async fn wake_strategy(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let sk = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().wake_strategy(&sk).await?.map(|k| k.to_string()))))
}
