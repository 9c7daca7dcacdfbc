//! Routes both APIs serve identically (api.md U1–U4, C1–C4); `/ping` answers with the
//! API's own title and `/token` checks the API's own identity kinds.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use crate::auth::{self, Caller};
use crate::error::ApiResult;
use crate::extract::RawBody;
use crate::AppState;

/// U1/C1: liveness, without authentication.
#[utoipa::path(get, path = "/ping", tag = "service", responses((status = 200, description = "{\"api\": \"AlchemiscaleAPI\"} or {\"api\": \"AlchemiscaleComputeAPI\"}")))]
pub async fn ping(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "api": state.api().title() }))
}

/// U2/C2: OAuth2 password form (`username`, `password`) → bearer token.
#[utoipa::path(post, path = "/token", tag = "service", responses((status = 200, description = "{\"access_token\": …, \"token_type\": \"bearer\"}"), (status = 401)))]
pub async fn token(State(state): State<AppState>, body: RawBody) -> ApiResult<Json<serde_json::Value>> {
    auth::token(&state, body).await
}

/// U3/C3: a credentials check.
#[utoipa::path(get, path = "/info", tag = "service")]
pub async fn info(_caller: Caller) -> Json<serde_json::Value> {
    Json(json!({ "message": "nothing yet" }))
}

/// U4/C4: are the state and object stores reachable? `null`, or 503 naming what is not.
#[utoipa::path(get, path = "/check", tag = "service", responses((status = 200), (status = 503)))]
pub async fn check(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<serde_json::Value>> {
    crate::check_stores(&state).await
}
