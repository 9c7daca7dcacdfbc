//! Routes both APIs serve identically (routes U1–U4, C1–C4); `/ping` answers with the
//! API's own title and `/token` checks the API's own identity kinds.

use alchemiscale_store::identities::IdentityKind;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Caller};
use crate::error::ApiResult;
use crate::extract::RawBody;
use crate::AppState;

/// The routes of this module, which both APIs' routers start from.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ping))
        .routes(routes!(token))
        .routes(routes!(info))
        .routes(routes!(check))
        .routes(routes!(identity_scopes))
}

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

/// U5/C5: scopes of an identity. Callers may read their own; admins (user API only) anyone's
/// (403 otherwise).
#[utoipa::path(get, path = "/identities/{identifier}/scopes", tag = "service", params(("identifier" = String, Path)))]
pub async fn identity_scopes(
    State(state): State<AppState>,
    caller: Caller,
    Path(identifier): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let scopes = if identifier == caller.identifier {
        state.store().list_scopes(caller.kind, &identifier).await?
    } else if caller.is_admin() {
        match state.store().list_scopes(IdentityKind::User, &identifier).await? {
            Some(s) => Some(s),
            None => state.store().list_scopes(IdentityKind::Admin, &identifier).await?,
        }
    } else {
        return Err(auth::forbidden("an identity may only list its own scopes"));
    };
    Ok(Json(json!(scopes.unwrap_or_default())))
}
