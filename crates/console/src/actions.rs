//! The network's state-changing forms: state, weight, waking its strategy, creating,
//! actioning and cancelling tasks. Each checks the session's CSRF token and scopes, calls
//! the same store operation as the API route of the same name, and redirects back with a
//! notice (303, so a reload does not repeat it).

use alchemiscale_model::{NetworkState, ScopedKey};
use alchemiscale_store::tasks::TaskRequest;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::{ConsoleError, ConsoleResult};
use crate::form::Form;
use crate::pages::path_key;
use crate::session::Session;
use crate::ConsoleState;

/// Most tasks one form creates.
pub const MAX_CREATE: usize = 1000;

/// A form posted to one of a network's actions, in the order every action checks it: a
/// session (else the login page), the network named by the path within the session's
/// scopes, the form with the session's CSRF token.
pub struct NetworkForm {
    state: ConsoleState,
    session: Session,
    network: ScopedKey,
    form: Form,
}

impl FromRequest<ConsoleState> for NetworkForm {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let Path(raw) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|_| ConsoleError::BadRequest("Not a network key.".into()))?;
        let form = Form::from_request(Request::from_parts(parts, body), state).await?;
        form.check_csrf(&session)?;
        let network = path_key(&session, &raw, &["AlchemicalNetwork"], "network")?;
        Ok(NetworkForm { state: state.clone(), session, network, form })
    }
}

/// Back to where the form was (a console page only), else the network page.
fn back(form: &Form, network: &ScopedKey, notice: &str, n: usize) -> Response {
    let target = form.get("return").filter(|r| r.starts_with("/ui/") && !r.starts_with("//") && !r.contains('\\'));
    let target = target.map(str::to_string).unwrap_or_else(|| format!("/ui/networks/{network}"));
    let sep = if target.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{target}{sep}notice={notice}&n={n}")).into_response()
}

async fn require_network(state: &ConsoleState, network: &ScopedKey) -> ConsoleResult<()> {
    match state.store().exists(network).await? {
        true => Ok(()),
        false => Err(ConsoleError::NotFound(format!("No network {network}."))),
    }
}

pub async fn set_state(NetworkForm { state, network, form, .. }: NetworkForm) -> ConsoleResult<Response> {
    let new: NetworkState = form
        .required("state", "State")?
        .parse()
        .map_err(|e: alchemiscale_model::status::EnumError| ConsoleError::BadRequest(e.to_string()))?;
    if state.store().set_network_states(&[(network.clone(), new)]).await?.first().cloned().flatten().is_none() {
        return Err(ConsoleError::NotFound(format!("No network {network}.")));
    }
    Ok(back(&form, &network, "state", 1))
}

pub async fn set_weight(NetworkForm { state, network, form, .. }: NetworkForm) -> ConsoleResult<Response> {
    let weight: f64 = form
        .required("weight", "Weight")?
        .parse()
        .map_err(|_| ConsoleError::BadRequest("Weight must be a number between 0 and 1.".into()))?;
    if state.store().set_network_weights(&[(network.clone(), weight)]).await?.first().cloned().flatten().is_none() {
        return Err(ConsoleError::NotFound(format!("No network {network}.")));
    }
    Ok(back(&form, &network, "weight", 1))
}

pub async fn wake_strategy(NetworkForm { state, network, form, .. }: NetworkForm) -> ConsoleResult<Response> {
    if state.store().wake_strategy(&network).await?.is_none() {
        return Err(ConsoleError::BadRequest("This network has no strategy to wake.".into()));
    }
    Ok(back(&form, &network, "woken", 1))
}

pub async fn create_tasks(NetworkForm { state, session, network, form }: NetworkForm) -> ConsoleResult<Response> {
    let transformation: ScopedKey = form
        .required("transformation", "Transformation")?
        .parse()
        .map_err(|_| ConsoleError::BadRequest("Not a transformation key.".into()))?;
    session.require(transformation.scope())?;
    let count: usize =
        form.required("count", "How many")?.parse().map_err(|_| ConsoleError::BadRequest("How many must be a whole number.".into()))?;
    if !(1..=MAX_CREATE).contains(&count) {
        return Err(ConsoleError::BadRequest(format!("Create between 1 and {MAX_CREATE} tasks at a time.")));
    }
    require_network(&state, &network).await?;
    if !state.store().transformation_networks(&transformation).await?.contains(&network) {
        return Err(ConsoleError::BadRequest("That network does not contain this transformation.".into()));
    }
    let requests: Vec<TaskRequest> = (0..count).map(|_| TaskRequest { transformation: transformation.clone(), extends: None }).collect();
    let created = state.store().create_tasks(&requests, Some(&session.identifier)).await?;
    if !form.checked("action") {
        return Ok(back(&form, &network, "created", created.len()));
    }
    let tasks: Vec<Option<ScopedKey>> = created.into_iter().map(Some).collect();
    let actioned = state.store().action_tasks(&network, &tasks, None).await?;
    Ok(back(&form, &network, "created-actioned", actioned.iter().flatten().count()))
}

/// The checked tasks of a form, each in the session's scopes.
fn checked_tasks(session: &Session, form: &Form) -> ConsoleResult<Vec<Option<ScopedKey>>> {
    let tasks = form.all("task");
    if tasks.is_empty() {
        return Err(ConsoleError::BadRequest("Select at least one task.".into()));
    }
    tasks
        .into_iter()
        .map(|t| {
            let key: ScopedKey = t.parse().map_err(|_| ConsoleError::BadRequest(format!("'{t}' is not a task key.")))?;
            session.require(key.scope())?;
            Ok(Some(key))
        })
        .collect()
}

pub async fn action_tasks(NetworkForm { state, session, network, form }: NetworkForm) -> ConsoleResult<Response> {
    let tasks = checked_tasks(&session, &form)?;
    require_network(&state, &network).await?;
    let actioned = state.store().action_tasks(&network, &tasks, None).await?;
    Ok(back(&form, &network, "actioned", actioned.iter().flatten().count()))
}

pub async fn cancel_tasks(NetworkForm { state, session, network, form }: NetworkForm) -> ConsoleResult<Response> {
    let tasks = checked_tasks(&session, &form)?;
    require_network(&state, &network).await?;
    let cancelled = state.store().cancel_tasks(&network, &tasks).await?;
    Ok(back(&form, &network, "cancelled", cancelled.iter().flatten().count()))
}
