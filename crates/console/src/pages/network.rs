//! `GET /ui/networks/{network}`: the drawing, task status per transformation, weights,
//! restart patterns, the strategy, and the network's actions.

use std::collections::HashMap;

use alchemiscale_model::NetworkState;
use alchemiscale_store::console::NetworkDetail;
use axum::extract::{Path, Query, State};
use maud::{html, Markup};

use crate::error::{ConsoleError, ConsoleResult};
use crate::graph::{edge_state, network_svg};
use crate::layout::{csrf, key_link, shell, status_bar, status_counts, STATUS_COLOURS};
use crate::pages::{notice, path_key};
use crate::session::Session;
use crate::ConsoleState;

/// Transformations per page of the table.
pub const PER_PAGE: usize = 100;

/// Order of the table: transformations needing attention first.
fn rank(state: &str) -> u8 {
    match state {
        "error" => 0,
        "running" => 1,
        "waiting" => 2,
        "none" => 3,
        "complete" => 4,
        _ => 5,
    }
}

pub async fn page(
    State(state): State<ConsoleState>,
    session: Session,
    Path(raw): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ConsoleResult<Markup> {
    let (state, session, raw, query) = (&state, &session, raw.as_str(), &query);
    let key = path_key(session, raw, &["AlchemicalNetwork"], "network")?;
    let missing = || ConsoleError::NotFound(format!("No network {key}."));
    let (structure, positions) = state.layouts().get(state.store(), &key).await?.ok_or_else(missing)?;
    let live = state.store().console_network_live(&key, structure.id).await?.ok_or_else(missing)?;
    let network = NetworkDetail::assemble(&structure, live);
    let mut rows: Vec<_> = network.transformations.iter().collect();
    rows.sort_by(|a, b| {
        rank(edge_state(&a.tasks)).cmp(&rank(edge_state(&b.tasks))).then_with(|| a.name.cmp(&b.name)).then(a.id.cmp(&b.id))
    });
    let pages = rows.len().div_ceil(PER_PAGE).max(1);
    let page_no = query.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).clamp(1, pages);
    let shown = &rows[(page_no - 1) * PER_PAGE..(page_no * PER_PAGE).min(rows.len())];
    let mut totals = std::collections::BTreeMap::new();
    for t in &network.transformations {
        for (s, n) in &t.tasks {
            *totals.entry(s.clone()).or_insert(0) += n;
        }
    }
    let title = network.name.clone().unwrap_or_else(|| "(unnamed network)".into());
    let here = format!("/ui/networks/{key}");
    let body = html! {
        h1 { "Network " (title) }
        (notice(query))
        dl.facts {
            dt { "Key" } dd { code { (key) } }
            dt { "Scope" } dd { code { (key.scope()) } }
            dt { "State" } dd { (network.state) }
            dt { "Weight" } dd { (format!("{:.3}", network.weight)) }
            dt { "Chemical systems" } dd { (network.systems.len()) }
            dt { "Transformations" } dd { (network.transformations.len()) }
            dt { "Tasks" } dd { (status_counts(&totals)) }
        }
        section.noprint aria-label="Network actions" {
            h2 { "Actions" }
            form.inline method="post" action={ (here) "/state" } data-confirm="Change this network's state?" {
                (csrf(session))
                label { "State"
                    select name="state" {
                        @for s in NetworkState::ALL {
                            option value=(s.as_str()) selected[s.as_str() == network.state] { (s.as_str()) }
                        }
                    }
                }
                button type="submit" { "Set state" }
            }
            form.inline method="post" action={ (here) "/weight" } data-confirm="Change this network's weight?" {
                (csrf(session))
                label { "Weight (0–1)" input type="number" name="weight" min="0" max="1" step="0.01" value=(format!("{:.2}", network.weight)) required; }
                button type="submit" { "Set weight" }
            }
        }
        h2 { "Drawing" }
        figure {
            (network_svg(&network, &positions))
            figcaption {
                "Nodes are chemical systems; edges are transformations, coloured by their tasks' most pressing status and wider with more results. Select an edge to see its tasks."
                div.legend {
                    @for (s, _) in STATUS_COLOURS.iter().take(4) { span { span class={ "swatch swatch-" (s) } {} (s) } }
                    span { span.swatch.swatch-none {} "no tasks" }
                }
            }
        }
        h2 { "Strategy" }
        @match &network.strategy {
            None => p { "No strategy is set on this network." },
            Some((class, s)) => {
                dl.facts {
                    dt { "Strategy" } dd { (class) }
                    dt { "Mode" } dd { (s.mode) }
                    dt { "Status" } dd { (s.status) }
                    dt { "Iterations" } dd { (s.iterations) }
                    dt { "Sleep interval" } dd { (s.sleep_interval) " s" }
                    dt { "Last iteration" } dd { (s.last_iteration.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_else(|| "never".into())) }
                    dt { "Most tasks per transformation" } dd { (s.max_tasks_per_transformation) " (" (s.task_scaling) " scaling)" }
                }
                @if let Some((kind, message)) = &s.exception { p.notice.error { (kind) ": " (message) } }
                @if let Some(tb) = &s.traceback { pre.traceback { (tb) } }
                @if s.status.as_str() == "error" {
                    form.inline method="post" action={ (here) "/strategy/wake" } data-confirm="Wake this strategy?" {
                        (csrf(session))
                        button type="submit" { "Wake strategy" }
                    }
                }
            }
        }
        h2 { "Restart patterns" }
        @if network.restart_patterns.is_empty() {
            p { "None: failed tasks stay errored." }
        } @else {
            table {
                thead { tr { th scope="col" { "Pattern" } th.num scope="col" { "Retries allowed" } } }
                tbody { @for (p, n) in &network.restart_patterns { tr { td { code { (p) } } td.num { (n) } } } }
            }
        }
        h2 #transformations { "Transformations" }
        p.hint { "Errored first, then running, waiting, without tasks, complete. Page " (page_no) " of " (pages) "." }
        table {
            thead { tr {
                th scope="col" { "Transformation" } th scope="col" { "Protocol" } th scope="col" { "Tasks" }
                th scope="col" { "Progress" } th.num scope="col" title="The most urgent priority among its waiting and running tasks (1 is the most urgent)" { "Priority" }
                th.num scope="col" { "Results" }
            } }
            tbody {
                @for t in shown {
                    tr {
                        td { a href={ "/ui/transformations/" (t.key) "?network=" (key) } { (t.name.as_deref().unwrap_or(t.key.gufe_key().as_str())) } }
                        td { (t.protocol.as_deref().unwrap_or("")) }
                        td { (status_counts(&t.tasks)) }
                        td { (status_bar(&t.tasks)) }
                        td.num { (t.priority.map(|p| p.to_string()).unwrap_or_else(|| "—".into())) }
                        td.num { (t.ok_results) }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pager aria-label="Transformation pages" {
                @if page_no > 1 { a href={ (here) "?page=" (page_no - 1) "#transformations" } { "Previous" } }
                @if page_no < pages { a href={ (here) "?page=" (page_no + 1) "#transformations" } { "Next" } }
            }
        }
        p { (key_link(&key, Some("Permalink"))) }
    };
    Ok(shell(session, &format!("Network {title}"), body))
}
