//! `GET /ui/transformations/{transformation}?network=…`: a transformation's tasks, with
//! forms to create tasks and to action or cancel them on the network it was reached from.

use std::collections::HashMap;

use alchemiscale_model::ScopedKey;
use axum::extract::{Path, Query, State};
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::layout::{csrf, key_link, shell, status_badge, time};
use crate::pages::{notice, path_key};
use crate::session::Session;
use crate::ConsoleState;

/// Tasks listed (newest first).
pub const TASKS_LISTED: i64 = 500;

pub async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ConsoleResult<Markup> {
    let (state, session, raw, query) = (&state, &session, raw.as_str(), &query);
    let key = path_key(session, raw, &["Transformation", "NonTransformation"], "transformation")?;
    let (name, tasks) = state
        .store()
        .console_transformation_tasks(&key, TASKS_LISTED)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("No transformation {key}.")))?;
    // the network whose hub the forms act on: the one given, else the first reachable one
    let networks = state.store().transformation_networks(&key).await?;
    let network: Option<ScopedKey> = match query.get("network") {
        Some(n) => Some(
            n.parse()
                .ok()
                .filter(|n: &ScopedKey| networks.contains(n))
                .ok_or_else(|| ConsoleError::BadRequest("That network does not contain this transformation.".into()))?,
        ),
        None => networks.iter().find(|n| session.can_reach(n.scope())).cloned(),
    };
    let title = name.clone().unwrap_or_else(|| key.gufe_key().to_string());
    let back = match &network {
        Some(n) => format!("/ui/transformations/{key}?network={n}"),
        None => format!("/ui/transformations/{key}"),
    };
    let body = html! {
        h1 { "Transformation " (title) }
        (notice(query))
        dl.facts {
            dt { "Key" } dd { code { (key) } }
            dt { "In networks" } dd { @for n in &networks { (key_link(n, None)) " " } }
        }
        @if let Some(net) = &network {
            section.noprint aria-label="Create tasks" {
                h2 { "Create tasks" }
                form.inline method="post" action={ "/ui/networks/" (net) "/tasks/create" } data-confirm="Create these tasks?" {
                    (csrf(session))
                    input type="hidden" name="transformation" value=(key);
                    input type="hidden" name="return" value=(back);
                    label { "How many" input type="number" name="count" min="1" max="1000" value="1" required; }
                    label { "Action them on this network" input type="checkbox" name="action" checked; }
                    button type="submit" { "Create tasks" }
                }
            }
        }
        h2 { "Tasks" }
        @if tasks.is_empty() {
            p { "No tasks yet." }
        } @else {
            form #tasks method="post" action={ "/ui/networks/" (network.as_ref().map(|n| n.to_string()).unwrap_or_default()) "/tasks/action" } {
                (csrf(session))
                input type="hidden" name="return" value=(back);
                table {
                    thead { tr {
                        th scope="col" { input type="checkbox" aria-label="Select every task" data-select-all="task"; }
                        th scope="col" { "Task" } th scope="col" { "Status" } th.num scope="col" { "Priority" }
                        th scope="col" { "Created" } th.num scope="col" { "Actioned on" }
                    } }
                    tbody {
                        @for t in &tasks {
                            tr {
                                td { input type="checkbox" name="task" value=(t.key) aria-label={ "Select task " (t.key.gufe_key()) }; }
                                td { (key_link(&t.key, None)) }
                                td { (status_badge(&t.status)) }
                                td.num { (t.priority) }
                                td { (time(t.created)) }
                                td.num { (t.actioned_on) " network(s)" }
                            }
                        }
                    }
                }
                @if let Some(net) = &network {
                    button type="submit" data-confirm="Action the selected tasks on this network?" { "Action selected on this network" }
                    " "
                    button.danger type="submit" formaction={ "/ui/networks/" (net) "/tasks/cancel" } data-confirm="Cancel the selected tasks on this network?" {
                        "Cancel selected on this network"
                    }
                }
            }
            @if tasks.len() as i64 >= TASKS_LISTED { p.hint { "Showing the newest " (TASKS_LISTED) " tasks." } }
        }
    };
    Ok(shell(session, &format!("Transformation {title}"), body))
}
