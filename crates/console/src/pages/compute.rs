//! `GET /ui/compute`: compute services (heartbeat age, claimed tasks, recent failures,
//! throughput) and compute managers (status, saturation, errors).

use axum::extract::State;
use maud::{html, Markup};

use crate::error::ConsoleResult;
use crate::layout::{age, shell, time};
use crate::session::Session;
use crate::ConsoleState;

pub async fn page(State(state): State<ConsoleState>, session: Session) -> ConsoleResult<Markup> {
    let store = state.store();
    let now = chrono::Utc::now();
    let services = store.list_compute_services().await?;
    let hour_ago = now.timestamp_micros() - 3_600_000_000;
    let claims = store.console_claims_by_service(hour_ago).await?;
    let managers = store.list_compute_managers().await?;
    let expire = state.app().settings().registration_expire_seconds;
    let body = html! {
        h1 { "Compute" }
        h2 { "Compute services" }
        p.hint { "A registration lives while its service heartbeats; one silent for " (age(expire)) " is removed and its tasks go back to waiting." }
        @if services.is_empty() { p { "No compute service is registered." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Service" } th scope="col" { "Manager" } th scope="col" { "Registered" }
                    th.num scope="col" { "Last heartbeat" } th.num scope="col" { "Claimed tasks" }
                    th.num scope="col" { "Recent failures" } th.num scope="col" { "Claims, last hour" }
                } }
                tbody {
                    @for s in &services {
                        tr {
                            td { code { (s.identifier) } }
                            td { (s.manager_name.as_deref().unwrap_or("—")) }
                            td { (time(s.registered.timestamp_micros())) }
                            td.num { (age((now - s.heartbeat).num_seconds())) " ago" }
                            td.num { (s.claimed_tasks) }
                            td.num { (s.failures) }
                            td.num { (claims.get(&s.identifier.to_string()).copied().unwrap_or(0)) }
                        }
                    }
                }
            }
        }
        h2 { "Compute managers" }
        @if managers.is_empty() { p { "No compute manager is registered." } } @else {
            table {
                thead { tr {
                    th scope="col" { "Manager" } th scope="col" { "Status" } th.num scope="col" { "Saturation" }
                    th.num scope="col" { "Last update" } th scope="col" { "Detail" }
                } }
                tbody {
                    @for m in &managers {
                        tr {
                            td { code { (m.id) } }
                            td { @if m.status.as_str() == "ERROR" { span.badge.s-error { "ERROR" } } @else { span.badge.s-complete { "OK" } } }
                            td.num { (m.saturation.map(|s| format!("{:.0} %", s * 100.0)).unwrap_or_else(|| "—".into())) }
                            td.num { (age((now - m.last_status_update).num_seconds())) " ago" }
                            td { @if let Some(d) = &m.detail { pre.traceback { (d) } } }
                        }
                    }
                }
            }
        }
    };
    Ok(shell(&session, "Compute", body))
}
