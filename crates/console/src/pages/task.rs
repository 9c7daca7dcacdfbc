//! `GET /ui/tasks/{task}`: status history, claiming service, results and failures with
//! their tracebacks.

use axum::extract::{Path, State};
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::layout::{key_link, shell, status_badge, time};
use crate::pages::path_key;
use crate::session::Session;
use crate::ConsoleState;

/// One line of the status history.
struct Event {
    at: String,
    status: String,
    what: String,
}

/// How the status log's causes read.
fn cause_text(cause: &str, previous: &str, status: &str) -> String {
    match cause {
        "user" => format!("set to {status} by a user (was {previous})"),
        "restart" => "put back to waiting by the network's restart patterns".to_string(),
        "released" => "given back by the service that claimed it".to_string(),
        "expired" => "given back: the claiming service stopped heartbeating and its registration expired".to_string(),
        other => format!("{previous} → {status} ({other})"),
    }
}

pub async fn page(State(state): State<ConsoleState>, session: Session, Path(raw): Path<String>) -> ConsoleResult<Markup> {
    let key = path_key(&session, &raw, &["Task"], "task")?;
    let task = state.store().console_task(&key).await?.ok_or_else(|| ConsoleError::NotFound(format!("No task {key}.")))?;
    // the history the store keeps: creation, each claim, each result, every other status
    // change, in time order
    let mut events = vec![(
        task.created,
        Event {
            at: time(task.created),
            status: "waiting".into(),
            what: format!("created by {}", task.creator.as_deref().unwrap_or("unknown")),
        },
    )];
    for (service, at) in &task.claims {
        events.push((*at, Event { at: time(*at), status: "running".into(), what: format!("claimed by {service}") }));
    }
    for (at, previous, status, cause) in &task.status_changes {
        events.push((*at, Event { at: time(*at), status: status.clone(), what: cause_text(cause, previous, status) }));
    }
    for r in &task.results {
        let at = r
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|t| t.timestamp_micros())
            .unwrap_or(i64::MAX);
        let (status, what) = match r.ok {
            true => ("complete", "result returned".to_string()),
            false => ("error", "failure returned".to_string()),
        };
        events.push((
            at,
            Event {
                at: r.created.clone().unwrap_or_default(),
                status: status.into(),
                what: format!("{what} by {}", r.creator.as_deref().unwrap_or("unknown")),
            },
        ));
    }
    events.sort_by_key(|(at, _)| *at);
    let (tf, tf_name) = &task.transformation;
    let body = html! {
        h1 { "Task " code { (key.gufe_key()) } }
        dl.facts {
            dt { "Status" } dd { (status_badge(&task.status)) }
            dt { "Scope" } dd { code { (key.scope()) } }
            dt { "Transformation" } dd { (key_link(tf, tf_name.as_deref())) }
            dt { "Priority" } dd { (task.priority) }
            dt { "Created" } dd { (time(task.created)) " by " (task.creator.as_deref().unwrap_or("unknown")) }
            @if let Some(e) = &task.extends { dt { "Extends" } dd { (key_link(e, None)) } }
            dt { "Claimed by" } dd { (task.claimed_by.as_deref().unwrap_or("nobody")) }
        }
        h2 { "Status history" }
        table {
            thead { tr { th scope="col" { "When" } th scope="col" { "Status" } th scope="col" { "What" } } }
            tbody { @for (_, e) in &events { tr { td { (e.at) } td { (status_badge(&e.status)) } td { (e.what) } } } }
        }
        p.hint { "Cancelling a task takes it off a network (see below) without changing its status." }
        h2 { "Actioned on" }
        @if task.actioned_on.is_empty() { p { "No network." } } @else {
            table {
                thead { tr { th scope="col" { "Network" } th.num scope="col" { "Weight" } } }
                tbody { @for (n, name, w) in &task.actioned_on { tr { td { (key_link(n, name.as_deref())) } td.num { (format!("{w:.2}")) } } } }
            }
        }
        h2 { "Results" }
        @if task.results.is_empty() { p { "None yet." } }
        @for r in &task.results {
            section.result {
                h3 { @if r.ok { "Result" } @else { "Failure" } " " code { (r.key.gufe_key()) } }
                p { (r.created.as_deref().unwrap_or("")) " · " (r.creator.as_deref().unwrap_or("unknown")) @if let Some(s) = r.size { " · " (s) " bytes" } }
                @for tb in &r.tracebacks { pre.traceback { (tb) } }
            }
        }
    };
    Ok(shell(&session, &format!("Task {}", key.gufe_key()), body))
}
