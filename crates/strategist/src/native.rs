//! Strategies implemented in Rust: stratocaster 0.2's `ConnectivityStrategy` and
//! `RadialGrowthStrategy`, with the same settings (names, defaults, validation) and the
//! same weights. Both need only the network's graph and the number of successful results
//! per transformation (a gathered `ProtocolResult`'s `n_protocol_dag_results`), so no
//! result is downloaded for them.
//!
//! Two deliberate differences, both where stratocaster's answer depends on the iteration
//! order of Python sets (gufe keeps edges in a `frozenset`, ordered by the hash-seeded
//! hashes of their keys) and so changes from one process to the next:
//!
//! * Two transformations between the same ordered pair of systems: stratocaster looks up
//!   `get_edge_data(a, b)[0]` and weighs only one of them, twice; here each is weighed.
//! * `RadialGrowthStrategy`'s "lowest complete eccentricity": stratocaster lowers it while
//!   walking the edges, so its value depends on their order; here it is the value of the
//!   best order — the lower eccentricity of the innermost result-less transformation
//!   whose upper eccentricity lies below the component's maximum (else that maximum).

use alchemiscale_model::json::Value;

use crate::graph::Graph;
use crate::StrategyError;

/// `ConnectivityStrategySettings`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectivitySettings {
    pub decay_rate: f64,
    pub cutoff: Option<f64>,
    pub max_runs: Option<i64>,
}

/// `RadialGrowthStrategySettings`.
#[derive(Debug, Clone, PartialEq)]
pub struct RadialGrowthSettings {
    pub max_runs: i64,
    pub candidacy_max_distance: i64,
    pub decay_repeat_rate: f64,
    pub decay_distance_rate: f64,
}

/// A strategy the strategist runs natively.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeStrategy {
    Connectivity(ConnectivitySettings),
    RadialGrowth(RadialGrowthSettings),
}

/// Reads one settings model, collecting errors the way pydantic reports them.
struct SettingsReader<'a> {
    model: &'static str,
    fields: Option<&'a alchemiscale_model::json::Object>,
    errors: Vec<String>,
}

impl<'a> SettingsReader<'a> {
    fn new(model: &'static str, strategy: &'a Value) -> Result<Self, StrategyError> {
        let settings = strategy.get("settings").ok_or_else(|| StrategyError::validation(model, "settings", "Field required"))?;
        if settings.is_null() {
            return Err(StrategyError::validation(model, "settings", "Input should be a valid dictionary"));
        }
        let fields =
            settings.as_object().ok_or_else(|| StrategyError::validation(model, "settings", "Input should be a valid dictionary"))?;
        Ok(SettingsReader { model, fields: Some(fields), errors: Vec::new() })
    }

    fn value(&self, field: &str) -> Option<&'a Value> {
        self.fields.and_then(|f| f.get(field)).filter(|v| !v.is_null())
    }

    fn present(&self, field: &str) -> bool {
        self.value(field).is_some()
    }

    fn fail(&mut self, field: &str, message: &str) {
        self.errors.push(format!("{field}\n  {message}"));
    }

    /// A float field (integers accepted), checked by `valid`.
    fn float(&mut self, field: &str, default: Option<f64>, valid: impl Fn(f64) -> bool, rule: &str) -> Option<f64> {
        let Some(v) = self.value(field) else { return default };
        match v.as_number() {
            // NaN and the infinities are floats to pydantic too; the rule decides
            Some(n) => {
                let x = n.as_f64();
                if valid(x) {
                    Some(x)
                } else {
                    self.fail(field, &format!("Value error, {rule} [input_value={}]", n.source_text()));
                    default
                }
            }
            _ => {
                self.fail(field, "Input should be a valid number");
                default
            }
        }
    }

    /// An integer field, at least `min`.
    fn int(&mut self, field: &str, default: Option<i64>, min: i64, rule: &str) -> Option<i64> {
        let Some(v) = self.value(field) else { return default };
        let n = v.as_number().and_then(|n| n.as_i64().or_else(|| integral(n.as_f64())));
        match n {
            Some(n) if n >= min => Some(n),
            Some(_) => {
                self.fail(field, &format!("Value error, {rule} [input_value={}]", v.to_python_json()));
                default
            }
            None => {
                self.fail(field, "Input should be a valid integer");
                default
            }
        }
    }

    fn finish<T>(self, settings: T) -> Result<T, StrategyError> {
        if self.errors.is_empty() {
            return Ok(settings);
        }
        let n = self.errors.len();
        let plural = if n == 1 { "" } else { "s" };
        Err(StrategyError::new("ValidationError", format!("{n} validation error{plural} for {}\n{}", self.model, self.errors.join("\n"))))
    }
}

/// A float with no fractional part, as pydantic accepts for integer fields.
fn integral(x: f64) -> Option<i64> {
    (x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
}

fn in_unit_interval(x: f64) -> bool {
    0.0 < x && x < 1.0
}

impl NativeStrategy {
    /// The native strategy for a stored Strategy object (its keyed dict), chosen by
    /// class; None if the class has no native implementation. Invalid settings are an
    /// error (stratocaster's pydantic validation fails the same way).
    pub fn from_dict(qualname: &str, module: &str, strategy: &Value) -> Option<Result<NativeStrategy, StrategyError>> {
        if module != "stratocaster" && !module.starts_with("stratocaster.") {
            return None;
        }
        match qualname {
            "ConnectivityStrategy" => Some(connectivity_settings(strategy).map(NativeStrategy::Connectivity)),
            "RadialGrowthStrategy" => Some(radial_settings(strategy).map(NativeStrategy::RadialGrowth)),
            _ => None,
        }
    }

    /// Raw (not yet normalised) weights, one per edge of `graph`; `results[i]` is the
    /// number of successful results of edge `i`'s transformation.
    pub fn weights(&self, graph: &Graph, results: &[u64]) -> Vec<Option<f64>> {
        match self {
            NativeStrategy::Connectivity(s) => connectivity(s, graph, results),
            NativeStrategy::RadialGrowth(s) => radial_growth(s, graph, results),
        }
    }
}

fn connectivity_settings(strategy: &Value) -> Result<ConnectivitySettings, StrategyError> {
    let mut r = SettingsReader::new("ConnectivityStrategySettings", strategy)?;
    let decay_rate = r.float("decay_rate", Some(0.5), in_unit_interval, "`decay_rate` must be between 0 and 1").unwrap_or(0.5);
    let cutoff = r.float("cutoff", None, |x| x > 0.0, "`cutoff` must be greater than 0");
    let max_runs = r.int("max_runs", None, 1, "`max_runs` must be greater than or equal to 1");
    if !r.present("max_runs") && !r.present("cutoff") {
        r.errors.push("  Value error, At least one of `max_runs` or `cutoff` must be set".into());
    }
    r.finish(ConnectivitySettings { decay_rate, cutoff, max_runs })
}

fn radial_settings(strategy: &Value) -> Result<RadialGrowthSettings, StrategyError> {
    let mut r = SettingsReader::new("RadialGrowthStrategySettings", strategy)?;
    let settings = RadialGrowthSettings {
        max_runs: r.int("max_runs", Some(3), 1, "`max_runs` must be greater than or equal to 1").unwrap_or(3),
        candidacy_max_distance: r
            .int("candidacy_max_distance", Some(1), 1, "`candidacy_max_distance` must be greater than or equal to 1")
            .unwrap_or(1),
        decay_repeat_rate: r
            .float("decay_repeat_rate", Some(0.5), in_unit_interval, "`decay_repeat_rate` must be between 0 and 1")
            .unwrap_or(0.5),
        decay_distance_rate: r
            .float("decay_distance_rate", Some(0.5), in_unit_interval, "`decay_distance_rate` must be between 0 and 1")
            .unwrap_or(0.5),
    };
    r.finish(settings)
}

/// Python's `float ** int` (C `pow`).
fn pow(base: f64, exponent: i64) -> f64 {
    base.powf(exponent as f64)
}

/// `ConnectivityStrategy._propose`: the mean degree of the two end states, times
/// `decay_rate ** results`; null below `cutoff` or from `max_runs` results on.
fn connectivity(s: &ConnectivitySettings, graph: &Graph, results: &[u64]) -> Vec<Option<f64>> {
    let degree = graph.degrees();
    graph
        .edges
        .iter()
        .zip(results)
        .map(|(e, &n)| {
            let scaling = pow(s.decay_rate, n as i64);
            // same operation order as Python: scaling * (a + b) / 2
            let weight = scaling * (degree[e.a] + degree[e.b]) as f64 / 2.0;
            let below_cutoff = s.cutoff.is_some_and(|c| weight < c);
            let enough_runs = s.max_runs.is_some_and(|m| n as i64 >= m);
            (!below_cutoff && !enough_runs).then_some(weight)
        })
        .collect()
}

/// `RadialGrowthStrategy._propose`, per connected component: `decay_repeat_rate **
/// results`, times a penalty for the transformation's distance (its upper eccentricity
/// minus the lowest complete eccentricity): 1 at distance 0, `decay_distance_rate **
/// (d - 1)` up to `candidacy_max_distance`, 0 beyond; null from `max_runs` results on.
fn radial_growth(s: &RadialGrowthSettings, graph: &Graph, results: &[u64]) -> Vec<Option<f64>> {
    let mut weights = vec![None; graph.edges.len()];
    for component in graph.components() {
        let ecc = graph.eccentricities(&component);
        let span = |i: usize| {
            let e = graph.edges[i];
            let (x, y) = (ecc[e.a].unwrap_or(0) as i64, ecc[e.b].unwrap_or(0) as i64);
            (x.min(y), x.max(y))
        };
        let max = component.iter().map(|&i| span(i).1).max().unwrap_or(0);
        let lowest_complete = component
            .iter()
            .filter(|&&i| results[i] == 0)
            .map(|&i| span(i))
            .filter(|&(_, upper)| upper < max)
            .map(|(lower, _)| lower)
            .min()
            .unwrap_or(max);
        for &i in &component {
            let n = results[i] as i64;
            if s.max_runs <= n {
                continue;
            }
            let repeats = if n == 0 { 1.0 } else { pow(s.decay_repeat_rate, n) };
            let distance = span(i).1 - lowest_complete;
            let factor = if distance > s.candidacy_max_distance {
                0.0
            } else if distance == 0 {
                1.0
            } else {
                pow(s.decay_distance_rate, distance - 1)
            };
            weights[i] = Some(repeats * factor);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Edge;
    use alchemiscale_model::json::parse;

    fn graph(nodes: usize, edges: &[(usize, usize)]) -> Graph {
        Graph { nodes, edges: edges.iter().map(|&(a, b)| Edge { a, b }).collect() }
    }

    fn strategy(qualname: &str, settings: &str) -> Result<NativeStrategy, StrategyError> {
        let text = format!(
            r#"{{"settings": {{"__class__": "{qualname}Settings", "__module__": "stratocaster.strategies", ":is_custom:": true{settings}}}, "__qualname__": "{qualname}", "__module__": "stratocaster.strategies.x", ":version:": 1}}"#
        );
        NativeStrategy::from_dict(qualname, "stratocaster.strategies.x", &parse(&text).unwrap()).expect("native")
    }

    fn connectivity(settings: &str) -> NativeStrategy {
        strategy("ConnectivityStrategy", settings).unwrap()
    }

    fn radial(settings: &str) -> NativeStrategy {
        strategy("RadialGrowthStrategy", settings).unwrap()
    }

    #[test]
    fn only_stratocaster_classes_are_native() {
        let v = parse(r#"{"settings": {"max_runs": 3}}"#).unwrap();
        assert!(NativeStrategy::from_dict("ConnectivityStrategy", "mylab.strategies", &v).is_none());
        assert!(NativeStrategy::from_dict("OtherStrategy", "stratocaster.strategies", &v).is_none());
        assert!(NativeStrategy::from_dict("ConnectivityStrategy", "stratocaster.strategies.connectivity", &v).is_some());
    }

    #[test]
    fn connectivity_settings_defaults_and_validation() {
        assert_eq!(
            connectivity(r#", "max_runs": 3"#),
            NativeStrategy::Connectivity(ConnectivitySettings { decay_rate: 0.5, cutoff: None, max_runs: Some(3) })
        );
        assert_eq!(
            connectivity(r#", "decay_rate": 0.25, "cutoff": 1, "max_runs": null"#),
            NativeStrategy::Connectivity(ConnectivitySettings { decay_rate: 0.25, cutoff: Some(1.0), max_runs: None })
        );
        let e = strategy("ConnectivityStrategy", r#", "decay_rate": 1.5, "max_runs": 3"#).unwrap_err();
        assert_eq!(e.class, "ValidationError");
        assert!(e.message.contains("1 validation error for ConnectivityStrategySettings"), "{}", e.message);
        assert!(e.message.contains("decay_rate\n  Value error, `decay_rate` must be between 0 and 1 [input_value=1.5]"), "{}", e.message);
        let e = strategy("ConnectivityStrategy", r#", "decay_rate": 0.5"#).unwrap_err();
        assert!(e.message.contains("At least one of `max_runs` or `cutoff` must be set"), "{}", e.message);
        let e = strategy("ConnectivityStrategy", r#", "cutoff": 0, "max_runs": 0"#).unwrap_err();
        assert!(e.message.starts_with("2 validation errors"), "{}", e.message);
        assert!(e.message.contains("`cutoff` must be greater than 0") && e.message.contains("`max_runs` must be greater than"));
        let e = strategy("ConnectivityStrategy", r#", "cutoff": NaN, "max_runs": 3"#).unwrap_err();
        assert!(e.message.contains("`cutoff` must be greater than 0 [input_value=NaN]"), "{}", e.message);
        let e = strategy("ConnectivityStrategy", r#", "max_runs": "three""#).unwrap_err();
        assert!(e.message.contains("Input should be a valid integer"), "{}", e.message);
        let e = NativeStrategy::from_dict("ConnectivityStrategy", "stratocaster", &parse("{}").unwrap()).unwrap().unwrap_err();
        assert!(e.message.contains("settings\n  Field required"), "{}", e.message);
    }

    #[test]
    fn radial_settings_defaults_and_validation() {
        assert_eq!(
            radial(""),
            NativeStrategy::RadialGrowth(RadialGrowthSettings {
                max_runs: 3,
                candidacy_max_distance: 1,
                decay_repeat_rate: 0.5,
                decay_distance_rate: 0.5
            })
        );
        let e = strategy("RadialGrowthStrategy", r#", "candidacy_max_distance": 0, "decay_distance_rate": 1"#).unwrap_err();
        assert!(e.message.contains("`candidacy_max_distance` must be greater than or equal to 1"), "{}", e.message);
        assert!(e.message.contains("`decay_distance_rate` must be between 0 and 1"), "{}", e.message);
    }

    /// A triangle 0-1-2 with a tail 2-3: degrees 2, 2, 3, 1.
    fn triangle_with_tail() -> Graph {
        graph(4, &[(0, 1), (1, 2), (2, 0), (2, 3)])
    }

    #[test]
    fn connectivity_weighs_mean_degree_with_decay() {
        let g = triangle_with_tail();
        let s = connectivity(r#", "max_runs": 5"#);
        // no results: mean degrees (2+2)/2, (2+3)/2, (3+2)/2, (3+1)/2
        assert_eq!(s.weights(&g, &[0, 0, 0, 0]), vec![Some(2.0), Some(2.5), Some(2.5), Some(2.0)]);
        // decay 0.5 per result
        assert_eq!(s.weights(&g, &[1, 2, 0, 3]), vec![Some(1.0), Some(0.625), Some(2.5), Some(0.25)]);
        let s = connectivity(r#", "decay_rate": 0.1, "max_runs": 5"#);
        assert_eq!(s.weights(&g, &[1, 0, 0, 0])[0], Some(0.1f64.powf(1.0) * 4.0 / 2.0));
    }

    #[test]
    fn connectivity_cutoff_and_max_runs() {
        let g = triangle_with_tail();
        // max_runs only: null from 2 results on
        let s = connectivity(r#", "max_runs": 2"#);
        assert_eq!(s.weights(&g, &[1, 2, 3, 0]), vec![Some(1.0), None, None, Some(2.0)]);
        // cutoff only: null below 1.0 (1.25 stays, 0.625 goes, exactly 1.0 stays)
        let s = connectivity(r#", "cutoff": 1.0"#);
        assert_eq!(s.weights(&g, &[1, 2, 1, 1]), vec![Some(1.0), None, Some(1.25), Some(1.0)]);
        // both: either rule makes it null
        let s = connectivity(r#", "cutoff": 1.0, "max_runs": 1"#);
        assert_eq!(s.weights(&g, &[0, 2, 1, 0]), vec![Some(2.0), None, None, Some(2.0)]);
    }

    #[test]
    fn connectivity_is_per_edge_in_every_component() {
        // two components: 0-1 and 2-3-4 (star around 3), plus a loop on 5
        let g = graph(6, &[(0, 1), (2, 3), (4, 3), (5, 5)]);
        let s = connectivity(r#", "max_runs": 9"#);
        assert_eq!(s.weights(&g, &[0; 4]), vec![Some(1.0), Some(1.5), Some(1.5), Some(2.0)]);
    }

    /// The docstring's example: a centre 2 with two neighbours 3, each with three leaves 4
    /// (eccentricities: centre 2, inner 3, leaves 4).
    fn star_of_stars() -> Graph {
        graph(9, &[(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6), (2, 7), (2, 8)])
    }

    #[test]
    fn radial_growth_starts_at_the_centre() {
        let g = star_of_stars();
        let s = radial("");
        // nothing done: lowest complete = 2 (the inner edges 2-3 have no results);
        // inner edges at distance 3-2 = 1 -> factor 0.5^0 = 1; leaves at distance 2 > 1 -> 0
        let w = s.weights(&g, &[0; 8]);
        assert_eq!(w, vec![Some(1.0), Some(1.0), Some(0.0), Some(0.0), Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
        // one inner edge done: still 2; the done one decays by its repeats
        let w = s.weights(&g, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(w[..2], [Some(0.5), Some(1.0)]);
        assert_eq!(w[2], Some(0.0));
        // both inner edges done: only outer edges (upper 4 = the maximum) lack results, so
        // the lowest complete eccentricity stays 4 (stratocaster's code; its docstring says
        // 3): leaves at distance 0 -> 1; inner edges at -1 -> 0.5 ** -2 = 4 times their repeats
        let w = s.weights(&g, &[1, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(w, vec![Some(2.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0)]);
    }

    #[test]
    fn radial_growth_distance_decay_max_runs_and_termination() {
        let g = star_of_stars();
        let s = radial(r#", "candidacy_max_distance": 2, "decay_distance_rate": 0.25, "max_runs": 2"#);
        // leaves at distance 2 are candidates now, at 0.25 ** (2 - 1)
        let w = s.weights(&g, &[0; 8]);
        assert_eq!(w[0], Some(1.0));
        assert_eq!(w[2], Some(0.25));
        // max_runs = 2: an edge with two results is null; with both inner edges done the
        // lowest complete eccentricity is the maximum 4, so the other inner edge sits at
        // distance -1: 0.5 (one repeat) * 0.25 ** -2
        let w = s.weights(&g, &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(w[0], None);
        assert_eq!(w[1], Some(0.5 * 16.0));
        assert_eq!(w[2], Some(1.0));
        // everything done max_runs times: every weight null (the strategy goes dormant)
        assert!(s.weights(&g, &[2; 8]).iter().all(Option::is_none));
    }

    #[test]
    fn radial_growth_outer_ring_and_inner_edges_with_results() {
        // path 0-1-2-3-4: eccentricities 4 3 2 3 4
        let g = graph(5, &[(0, 1), (1, 2), (2, 3), (3, 4)]);
        let s = radial(r#", "max_runs": 9"#);
        // only the outer edges (3, 4) lack results: they do not lower the lowest complete
        // eccentricity below the maximum, so it stays 4: outer edges at distance 0 and the
        // inner ones (upper 3) at -1, boosted by 0.5 ** -2 = 4
        let w = s.weights(&g, &[0, 1, 1, 0]);
        assert_eq!(w, vec![Some(1.0), Some(0.5 * 4.0), Some(0.5 * 4.0), Some(1.0)]);
        // separate components are measured separately: 0-1 and 2-3-4
        let g = graph(5, &[(0, 1), (2, 3), (3, 4)]);
        let w = s.weights(&g, &[0, 0, 0]);
        // 0-1: both eccentricities 1, distance 0; 2-3-4 (eccentricities 2 1 2): no result-less
        // edge lies below the maximum 2, so both edges are at distance 0
        assert_eq!(w, vec![Some(1.0), Some(1.0), Some(1.0)]);
    }

    #[test]
    fn radial_growth_lowest_complete_is_order_independent() {
        // path of 7: eccentricities 6 5 4 3 4 5 6; result-less edges (4,5) on the left and
        // (3,4) on the right: the lowest complete eccentricity is 3 whichever comes first
        let g = graph(7, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]);
        let s = radial(r#", "max_runs": 9"#);
        let w = s.weights(&g, &[1, 0, 1, 0, 1, 1]);
        let reversed = Graph { nodes: 7, edges: g.edges.iter().rev().copied().collect() };
        let mut wr = s.weights(&reversed, &[1, 1, 0, 1, 0, 1]);
        wr.reverse();
        assert_eq!(w, wr);
        // (1,2) has upper 5 -> distance 2 > 1 -> weight 0; (2,3) upper 4 -> distance 1 -> 1.0
        assert_eq!(w[1], Some(0.0));
        assert_eq!(w[3], Some(1.0));
    }
}
