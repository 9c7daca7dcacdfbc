//! The compute API: routes C1–C19, wire-compatible with alchemiscale 0.8's
//! `AlchemiscaleComputeClient`, `AlchemiscaleComputeManagerClient` and
//! `SynchronousComputeService`.
//!
//! Deliberate differences from upstream: claims and pushes by
//! an unregistered or foreign service are refused with 4xx instead of 500 (W2, Q8, Q9); a
//! result is accepted only from a service that claimed the task (W17) and only if it is a
//! result of the task's transformation; a task extending a task with several results uses
//! the newest successful one (W24, Q6); a missing task is 400, as on the user API (W18).

use alchemiscale_model::json::{object, Value};
use alchemiscale_model::{ComputeManagerId, ComputeServiceId, Scope, ScopeDict};
use alchemiscale_store::compute::ClaimOutcome;
use alchemiscale_store::managers::parse_compute_manager_status;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{authorize_all, path_sk, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params, ResultUpload};
use crate::user_api::opt_strings;
use crate::user_api::RawJson;
use crate::AppState;

type JsonResult = ApiResult<Json<serde_json::Value>>;

/// Routes of the compute API with their OpenAPI descriptions.
pub fn router() -> OpenApiRouter<AppState> {
    crate::service::router()
        .routes(routes!(task_transformation))
        .routes(routes!(task_transformation_gufe))
        .routes(routes!(set_task_result))
        .routes(routes!(register_service))
        .routes(routes!(deregister_service))
        .routes(routes!(heartbeat))
        .routes(routes!(query_taskhubs))
        .routes(routes!(claim_taskhub_tasks))
        .routes(routes!(claim_tasks))
        .routes(routes!(register_manager))
        .routes(routes!(deregister_manager))
        .routes(routes!(manager_instruction))
        .routes(routes!(manager_status))
        .routes(routes!(manager_clear_error))
        .routes(routes!(task_wanted))
        .routes(routes!(release_tasks))
}

/// C12: the transformation a task performs.
#[utoipa::path(get, path = "/tasks/{sk}/transformation", tag = "tasks", params(("sk" = String, Path)))]
async fn task_transformation(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let task = path_sk(&caller, &raw)?;
    Ok(Json(json!(state.store().get_task_transformation(&task).await?.to_string())))
}

/// C13: `[<transformation keyed chain>, <latin-1 blob of the extended task's result> | null]`.
#[utoipa::path(get, path = "/tasks/{sk}/transformation/gufe", tag = "tasks", params(("sk" = String, Path)))]
async fn task_transformation_gufe(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<axum::response::Response> {
    let task = path_sk(&caller, &raw)?;
    let transformation = state.store().get_task_transformation(&task).await?;
    let chain = state.store().get_chain(&transformation).await?;
    match state.store().extended_result_location(&task).await? {
        None => Ok(RawJson(format!("[{chain}, null]")).into_response()),
        Some(pdrr) => {
            let blob = crate::results::blob(&state, &pdrr).await?;
            Ok(crate::results::latin1_json_response(axum::body::Bytes::from(format!("[{chain}, \"")), blob, b"\"]"))
        }
    }
}

/// C14: upload a ProtocolDAGResult (`{"protocoldagresult": <bytes codec>,
/// "compute_service_id": …}`, gzip) → its ProtocolDAGResultRef key as an object.
#[utoipa::path(post, path = "/tasks/{sk}/results", tag = "tasks", params(("sk" = String, Path)))]
async fn set_task_result(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    request: axum::extract::Request,
) -> JsonResult {
    let task = path_sk(&caller, &raw)?;
    if task.qualname() != "Task" {
        return Err(ApiError::bad_request("`task` ScopedKey does not correspond to a `Task`"));
    }
    // the body is read only once the path is known to be acceptable
    let ResultUpload(upload) = <ResultUpload as axum::extract::FromRequest<AppState>>::from_request(request, &state).await?;
    let pdrr = crate::results::ingest(&state, &task, upload).await?;
    Ok(Json(json!(pdrr.to_dict())))
}

// ---- compute-service registration (C6–C8) -------------------------------------------------

fn service_id(raw: &str, status: StatusCode) -> ApiResult<ComputeServiceId> {
    raw.parse().map_err(|e: alchemiscale_model::KeyError| ApiError::Detail(status, e.to_string()))
}

fn manager_id(raw: &str) -> ApiResult<ComputeManagerId> {
    raw.parse().map_err(|e: alchemiscale_model::KeyError| ApiError::unprocessable(e.to_string()))
}

#[derive(Deserialize)]
struct Register {
    #[serde(default)]
    compute_manager_id: Option<String>,
}

/// C6: register a compute service (optionally under a compute manager).
#[utoipa::path(post, path = "/computeservice/{csid}/register", tag = "compute services", params(("csid" = String, Path)))]
async fn register_service(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let id = service_id(&raw, StatusCode::UNPROCESSABLE_ENTITY)?;
    let b: Register = body.typed()?;
    let manager = b.compute_manager_id.as_deref().map(manager_id).transpose()?;
    state.store().register_compute_service(&id, manager.as_ref()).await.map_err(|e| ApiError::from(e).as_unprocessable())?;
    Ok(Json(json!(id.to_string())))
}

/// C7: deregister (idempotent): its running tasks go back to waiting.
#[utoipa::path(post, path = "/computeservice/{csid}/deregister", tag = "compute services", params(("csid" = String, Path)))]
async fn deregister_service(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let id = service_id(&raw, StatusCode::UNPROCESSABLE_ENTITY)?;
    state.store().deregister_compute_service(&id).await?;
    Ok(Json(json!(id.to_string())))
}

/// C8: heartbeat; also expires registrations whose heartbeat is too old.
#[utoipa::path(post, path = "/computeservice/{csid}/heartbeat", tag = "compute services", params(("csid" = String, Path)))]
async fn heartbeat(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let id = service_id(&raw, StatusCode::UNPROCESSABLE_ENTITY)?;
    state.store().heartbeat_compute_service(&id, state.settings().registration_expire_seconds).await?;
    Ok(Json(json!(id.to_string())))
}

// ---- TaskHubs and claiming (C9–C11) -----------------------------------------------------

/// C9: TaskHubs in the caller's scopes; with `return_gufe`, a map to each hub's
/// full-dict JSON string.
#[utoipa::path(get, path = "/taskhubs", tag = "claiming", params(("return_gufe" = Option<bool>, Query), ("org" = Option<String>, Query), ("campaign" = Option<String>, Query), ("project" = Option<String>, Query)))]
async fn query_taskhubs(State(state): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> JsonResult {
    let p = Params::from_query(q.as_deref());
    let return_gufe = p.bool("return_gufe", false)?;
    let spaces = caller.search_space(&p.scope()?);
    let hubs = state.store().query_taskhubs(&spaces).await?;
    if !return_gufe {
        return Ok(Json(json!(hubs.iter().map(|(h, _, _)| h.to_string()).collect::<Vec<_>>())));
    }
    let mut map = serde_json::Map::new();
    for (hub, network, weight) in hubs {
        let d = object([
            ("network", Value::from(network.to_string())),
            ("weight", Value::from(weight)),
            ("__qualname__", Value::from("TaskHub")),
            ("__module__", Value::from(alchemiscale_model::hash::ALCHEMISCALE_MODULE)),
            (":version:", Value::from(1i64)),
        ]);
        map.insert(hub.to_string(), json!(d.to_python_json()));
    }
    Ok(Json(serde_json::Value::Object(map)))
}

#[derive(Deserialize)]
struct HubClaim {
    compute_service_id: String,
    count: i64,
    #[serde(default)]
    protocols: Option<Vec<String>>,
}

/// C10: claim up to `count` tasks from one TaskHub.
#[utoipa::path(post, path = "/taskhubs/{sk}/claim", tag = "claiming", params(("sk" = String, Path)))]
async fn claim_taskhub_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let hub = path_sk(&caller, &raw)?;
    let b: HubClaim = body.typed()?;
    let id = service_id(&b.compute_service_id, StatusCode::BAD_REQUEST)?;
    let count = b.count.max(0) as usize;
    let claimed = state.store().claim_taskhub_tasks(&hub, &id, count, b.protocols.as_deref()).await?;
    state.metrics().claimed("taskhub", claimed.iter().flatten().count());
    Ok(opt_strings(claimed))
}

#[derive(Deserialize)]
struct Claim {
    scopes: Vec<ScopeDict>,
    #[serde(default)]
    scopes_exclude: Option<Vec<ScopeDict>>,
    compute_service_id: String,
    count: i64,
    #[serde(default)]
    protocols: Option<Vec<String>>,
}

fn scopes_of(dicts: &[ScopeDict]) -> ApiResult<Vec<Scope>> {
    dicts.iter().map(|d| d.to_scope().map_err(|e| ApiError::bad_request(e.to_string()))).collect()
}

/// C11: claim up to `count` tasks across the caller's scopes; `null` when the service is
/// denied for too many recent failures.
#[utoipa::path(post, path = "/claim", tag = "claiming")]
async fn claim_tasks(State(state): State<AppState>, caller: Caller, body: Body) -> JsonResult {
    let b: Claim = body.typed()?;
    let id = service_id(&b.compute_service_id, StatusCode::BAD_REQUEST)?;
    let spaces = caller.search_spaces(&scopes_of(&b.scopes)?);
    let exclude = alchemiscale_model::scope::minimise(&scopes_of(b.scopes_exclude.as_deref().unwrap_or_default())?);
    let count = b.count.max(0) as usize;
    let s = state.settings();
    let outcome =
        state.store().claim_tasks(&spaces, &exclude, &id, count, b.protocols.as_deref(), s.forgive_time_seconds, s.max_failures).await?;
    Ok(Json(match outcome {
        ClaimOutcome::Denied => serde_json::Value::Null,
        ClaimOutcome::Claimed(keys) => {
            state.metrics().claimed("claim", keys.iter().flatten().count());
            opt_strings(keys).0
        }
    }))
}

// ---- compute managers (C15–C19) ------------------------------------------------------------

#[derive(Deserialize)]
struct Steal {
    #[serde(default)]
    steal: bool,
}

/// C15: register a compute manager (`steal` replaces an OK registration of the same name).
#[utoipa::path(post, path = "/computemanager/{cmid}/register", tag = "compute managers", params(("cmid" = String, Path)))]
async fn register_manager(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let id = manager_id(&raw)?;
    let b: Steal = body.typed()?;
    state.store().register_compute_manager(&id, b.steal).await.map_err(|e| ApiError::from(e).as_unprocessable())?;
    Ok(Json(json!(id.to_string())))
}

/// C16: deregister a compute manager (an ERROR registration silently stays).
#[utoipa::path(post, path = "/computemanager/{cmid}/deregister", tag = "compute managers", params(("cmid" = String, Path)))]
async fn deregister_manager(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>) -> JsonResult {
    let id = manager_id(&raw)?;
    state.store().deregister_compute_manager(&id).await?;
    Ok(Json(json!(id.to_string())))
}

#[derive(Deserialize)]
struct Instruction {
    #[serde(default)]
    scopes: Vec<ScopeDict>,
    #[serde(default)]
    protocols: Vec<String>,
}

/// C17: what a compute manager should do next: OK (with the number of claimable tasks),
/// SKIP or SHUTDOWN.
#[utoipa::path(post, path = "/computemanager/{cmid}/instruction", tag = "compute managers", params(("cmid" = String, Path)))]
async fn manager_instruction(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let id = manager_id(&raw)?;
    let b: Instruction = body.typed()?;
    let mut requested = scopes_of(&b.scopes)?;
    if requested.is_empty() {
        requested.push(Scope::all());
    }
    let spaces = caller.search_spaces(&requested);
    let s = state.settings();
    let instruction = state.store().compute_manager_instruction(&id, &spaces, &b.protocols, s.forgive_time_seconds, s.max_failures).await?;
    Ok(Json(json!(instruction)))
}

#[derive(Deserialize)]
struct Status {
    status: String,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    saturation: Option<f64>,
}

/// C18: a compute manager's status report.
#[utoipa::path(post, path = "/computemanager/{cmid}/status", tag = "compute managers", params(("cmid" = String, Path)))]
async fn manager_status(State(state): State<AppState>, _caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let id = manager_id(&raw)?;
    let b: Status = body.typed()?;
    let status = parse_compute_manager_status(&b.status)?;
    let s = state.settings();
    state
        .store()
        .update_compute_manager_status(
            &id,
            status,
            b.detail.as_deref(),
            b.saturation,
            s.manager_expire_seconds,
            s.manager_expire_seconds_error,
        )
        .await?;
    Ok(Json(json!(id.to_string())))
}

/// C19: remove an ERROR registration of the named manager (the path holds the name only).
#[utoipa::path(post, path = "/computemanager/{cmid}/clear_error", tag = "compute managers", params(("cmid" = String, Path, description = "the manager name")))]
async fn manager_clear_error(State(state): State<AppState>, _caller: Caller, Path(name): Path<String>) -> JsonResult {
    if !ComputeManagerId::valid_name(&name) {
        return Err(ApiError::bad_request("Could not find an ERROR compute manager with the provided name and UUID"));
    }
    state.store().clear_compute_manager_error(&name).await?;
    Ok(Json(serde_json::Value::Null))
}

// ---- extensions for our compute service (not used by upstream clients) ----------------------

/// Extension: is the task still wanted from this service (running, claimed by it, actioned
/// on a hub of an active network)? `{"wanted": bool}`. Lets a service stop work on tasks
/// that were cancelled or whose networks were deactivated (upstream issue #301).
#[utoipa::path(get, path = "/tasks/{sk}/wanted", tag = "extensions", params(("sk" = String, Path), ("compute_service_id" = String, Query)))]
async fn task_wanted(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, RawQuery(q): RawQuery) -> JsonResult {
    let task = path_sk(&caller, &raw)?;
    let p = Params::from_query(q.as_deref());
    let id = service_id(p.get("compute_service_id").unwrap_or(""), StatusCode::BAD_REQUEST)?;
    Ok(Json(json!({ "wanted": state.store().task_still_wanted(&task, &id.to_string()).await? })))
}

#[derive(Deserialize)]
struct Release {
    tasks: Vec<String>,
}

/// Extension: give claimed tasks back (running → waiting, claim removed); per input the
/// key if released, else null.
#[utoipa::path(post, path = "/computeservice/{csid}/release", tag = "extensions", params(("csid" = String, Path)))]
async fn release_tasks(State(state): State<AppState>, caller: Caller, Path(raw): Path<String>, body: Body) -> JsonResult {
    let id = service_id(&raw, StatusCode::UNPROCESSABLE_ENTITY)?;
    let b: Release = body.typed()?;
    let tasks = crate::extract::parse_sks(&b.tasks)?;
    authorize_all(&caller, &tasks)?;
    let released = state.store().release_tasks(&tasks, &id.to_string()).await?;
    Ok(opt_strings(released))
}
