//! `GET /ui`: scopes, networks by state, task counts, activity, compute services alive.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::{html, Markup};

use crate::cache::{ACTIVITY_HOURS, NETWORKS_LISTED};
use crate::error::ConsoleResult;
use crate::layout::{self, key_link, shell, status_bar, status_counts};
use crate::session::Session;
use crate::ConsoleState;

pub async fn page(State(state): State<ConsoleState>, session: Session) -> ConsoleResult<Markup> {
    let (state, session) = (&state, &session);
    let figures = state.figures().get(state.store(), session.scope_filter()).await?;
    let networks = &figures.networks;
    let mut tasks: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
    for s in &figures.scopes {
        for (k, v) in &s.tasks {
            *tasks.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &s.networks {
            *by_state.entry(k.clone()).or_default() += v;
        }
    }
    let chart = crate::chart::activity_svg(&figures.activity).unwrap_or_default();
    let counted = (alchemiscale_store::now_micros() - figures.counted_at) / 1_000_000;
    let body = html! {
        h1 { "Overview" }
        @if !session.is_admin() && session.scopes.is_empty() {
            p.notice { "This identity has no scopes yet: ask an admin to grant one." }
        }
        section.cards aria-label="Totals" {
            div.card { h2 { "Tasks" } div.figure { (tasks.values().sum::<i64>()) } (status_counts(&tasks)) (status_bar(&tasks)) }
            div.card {
                h2 { "Networks" } div.figure { (by_state.values().sum::<i64>()) }
                @for (s, n) in &by_state { span.badge { (s) ": " (n) } }
            }
            div.card { h2 { "Compute services alive" } div.figure { (figures.services) } a href="/ui/compute" { "Compute details" } }
        }
        h2 { "Activity" }
        figure {
            (layout::svg(chart))
            figcaption { "Claims, results and failures per hour over the last " (ACTIVITY_HOURS) " hours (counted " (layout::age(counted)) " ago)." }
        }
        h2 { "Scopes" }
        @if figures.scopes.is_empty() {
            p { "Nothing stored in your scopes yet." }
        } @else {
            table {
                thead { tr { th scope="col" { "Scope" } th scope="col" { "Networks" } th scope="col" { "Tasks" } th scope="col" { "Progress" } } }
                tbody {
                    @for s in &figures.scopes {
                        tr {
                            td { code { (s.scope) } }
                            td { @for (st, n) in &s.networks { span.badge { (st) ": " (n) } } }
                            td { (status_counts(&s.tasks)) }
                            td { (status_bar(&s.tasks)) }
                        }
                    }
                }
            }
        }
        h2 { "Networks" }
        @if networks.is_empty() {
            p { "No networks yet. Submit one with the Python client's " code { "create_network" } "." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "State" }
                    th.num scope="col" { "Weight" } th.num scope="col" { "Transformations" } th.num scope="col" { "Results" }
                } }
                tbody {
                    @for n in networks {
                        tr {
                            td { (key_link(&n.key, Some(n.name.as_deref().unwrap_or("(unnamed)")))) }
                            td { code { (n.key.scope()) } }
                            td { (n.state) }
                            td.num { (format!("{:.2}", n.weight)) }
                            td.num { (n.transformations) }
                            td.num { (n.ok_results) }
                        }
                    }
                }
            }
            @if networks.len() >= NETWORKS_LISTED { p.hint { "Showing the first " (NETWORKS_LISTED) " networks." } }
        }
    };
    Ok(shell(session, "Overview", body))
}
