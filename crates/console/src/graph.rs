//! The network drawing: chemical systems as nodes, transformations as edges coloured by
//! their tasks' state and as wide as their results are many.
//!
//! Node positions come from a force-directed layout (`fdg-sim`, Fruchterman–Reingold). A
//! network's structure never changes once submitted, so a layout is computed once per
//! network and kept ([`crate::layouts`]); a page view only colours it.

use std::collections::HashMap;

use alchemiscale_store::console::NetworkDetail;
use fdg_sim::{ForceGraph, ForceGraphHelper, Simulation, SimulationParameters};
use maud::{html, Markup};

use crate::layout::status_colour;

pub const WIDTH: f32 = 1000.0;
pub const HEIGHT: f32 = 640.0;
const MARGIN: f32 = 24.0;

/// Node positions by chemical-system id, inside the drawing's box.
pub type Positions = HashMap<i64, (f32, f32)>;

/// Lay out systems `nodes` joined by `edges` (pairs of system ids).
pub fn layout(nodes: &[i64], edges: &[(i64, i64)]) -> Positions {
    let mut graph: ForceGraph<i64, ()> = ForceGraph::default();
    let mut index = HashMap::new();
    for &n in nodes {
        index.insert(n, graph.add_force_node(n.to_string(), n));
    }
    for (a, b) in edges {
        if let (Some(&a), Some(&b)) = (index.get(a), index.get(b)) {
            if a != b {
                graph.add_edge(a, b, ());
            }
        }
    }
    let mut sim = Simulation::from_graph(graph, SimulationParameters::default());
    // each step costs n² (every pair repels): fewer steps for large networks
    let steps = match nodes.len() {
        0..=200 => 300,
        201..=1000 => 120,
        _ => 60,
    };
    for _ in 0..steps {
        sim.update(0.035);
    }
    let raw: Vec<(i64, f32, f32)> = sim.get_graph().node_weights().map(|n| (n.data, n.location.x, n.location.y)).collect();
    let (mut min_x, mut max_x, mut min_y, mut max_y) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for &(_, x, y) in &raw {
        if x.is_finite() && y.is_finite() {
            (min_x, max_x, min_y, max_y) = (min_x.min(x), max_x.max(x), min_y.min(y), max_y.max(y));
        }
    }
    let span = |lo: f32, hi: f32| if hi > lo { hi - lo } else { 1.0 };
    let (sx, sy) = ((WIDTH - 2.0 * MARGIN) / span(min_x, max_x), (HEIGHT - 2.0 * MARGIN) / span(min_y, max_y));
    raw.into_iter()
        .map(|(id, x, y)| {
            let (x, y) = if x.is_finite() && y.is_finite() { (x, y) } else { (min_x, min_y) };
            (id, (MARGIN + (x - min_x) * sx, MARGIN + (y - min_y) * sy))
        })
        .collect()
}

/// The state an edge is drawn in: the most pressing status among its tasks.
pub fn edge_state(tasks: &std::collections::BTreeMap<String, i64>) -> &'static str {
    for status in ["error", "running", "waiting", "complete", "invalid", "deleted"] {
        if tasks.get(status).is_some_and(|n| *n > 0) {
            return status;
        }
    }
    "none"
}

/// Stroke width for a number of successful results.
fn width(results: i64) -> f32 {
    (1.0 + 1.5 * (1.0 + results.max(0) as f32).ln()).min(9.0)
}

/// The drawing as inline SVG (names escaped by maud).
pub fn network_svg(network: &NetworkDetail, positions: &Positions) -> Markup {
    let names: HashMap<i64, &str> = network.systems.iter().map(|s| (s.id, s.name.as_deref().unwrap_or(""))).collect();
    let labels = network.systems.len() <= 60;
    let at = |id: &i64| positions.get(id).copied().unwrap_or((MARGIN, MARGIN));
    html! {
        svg.network xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-label={ "Network drawing: " (network.systems.len()) " chemical systems, " (network.transformations.len()) " transformations" } {
            @for t in &network.transformations {
                @let state = edge_state(&t.tasks);
                @let colour = if state == "none" { crate::layout::NO_TASKS_COLOUR } else { status_colour(state) };
                @let title = format!("{} — {}; {} results", t.name.as_deref().unwrap_or(t.key.gufe_key().as_str()), state, t.ok_results);
                a href={ "/ui/transformations/" (t.key) "?network=" (network.key) } {
                    @if t.systems.len() == 2 {
                        @let ((x1, y1), (x2, y2)) = (at(&t.systems[0]), at(&t.systems[1]));
                        line x1=(format!("{x1:.1}")) y1=(format!("{y1:.1}")) x2=(format!("{x2:.1}")) y2=(format!("{y2:.1}"))
                            stroke=(colour) stroke-width=(format!("{:.1}", width(t.ok_results))) stroke-linecap="round" data-state=(state) {
                            title { (title) }
                        }
                    } @else if let Some(s) = t.systems.first() {
                        @let (x, y) = at(s);
                        circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="10" fill="none" stroke=(colour)
                            stroke-width=(format!("{:.1}", width(t.ok_results))) data-state=(state) { title { (title) } }
                    }
                }
            }
            @for s in &network.systems {
                @let (x, y) = at(&s.id);
                circle cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="5" fill="#ffffff" stroke="#333333" stroke-width="1.5" {
                    title { (names.get(&s.id).copied().unwrap_or("")) }
                }
                @if labels {
                    // labels of nodes near the right edge end at the node, so they stay inside
                    @let (lx, anchor) = if x > WIDTH - 160.0 { (x - 7.0, "end") } else { (x + 7.0, "start") };
                    text x=(format!("{lx:.1}")) y=(format!("{:.1}", y - 7.0)) text-anchor=(anchor) font-size="11" fill="#333333" {
                        (names.get(&s.id).copied().unwrap_or(""))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_places_every_node_inside_the_box_and_apart() {
        let nodes: Vec<i64> = (0..40).collect();
        let edges: Vec<(i64, i64)> = (0..39).map(|i| (i, i + 1)).chain([(0, 20), (5, 30)]).collect();
        let p = layout(&nodes, &edges);
        assert_eq!(p.len(), 40);
        for (x, y) in p.values() {
            assert!((0.0..=WIDTH).contains(x) && (0.0..=HEIGHT).contains(y), "({x}, {y})");
        }
        let distinct: std::collections::HashSet<(i32, i32)> = p.values().map(|(x, y)| (*x as i32, *y as i32)).collect();
        assert!(distinct.len() > 30, "nodes are spread out, not piled up: {} distinct positions", distinct.len());
    }

    #[test]
    fn edge_state_picks_the_most_pressing_status() {
        let counts = |v: &[(&str, i64)]| v.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        assert_eq!(edge_state(&counts(&[("complete", 3), ("error", 1)])), "error");
        assert_eq!(edge_state(&counts(&[("complete", 3), ("waiting", 1)])), "waiting");
        assert_eq!(edge_state(&counts(&[("complete", 3)])), "complete");
        assert_eq!(edge_state(&counts(&[])), "none");
    }
}
