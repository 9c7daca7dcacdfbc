//! Network layouts, kept: in memory for the networks drawn most recently, in the state store
//! for every network (so every API instance and every restart reuses them), and laid out in
//! the background soon after a network is submitted, so that even the first view of a large
//! network does not wait for its layout (about half a second for 2,000 transformations).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alchemiscale_model::ScopedKey;
use alchemiscale_store::console::NetworkStructure;
use alchemiscale_store::{Result, Store};

use crate::graph::{layout, Positions};

/// How often the background worker looks for networks without a layout; it lays out at
/// most [`WORKER_BATCH`] per look, the newest first, one after another on one thread.
pub const WORKER_EVERY: Duration = Duration::from_secs(2);
pub const WORKER_BATCH: i64 = 16;

/// A network's structure and its drawing's node positions.
pub type Drawn = (Arc<NetworkStructure>, Arc<Positions>);

/// The structure and layout of the networks drawn most recently.
pub struct LayoutCache {
    capacity: usize,
    entries: Mutex<(HashMap<String, Drawn>, VecDeque<String>)>,
}

impl LayoutCache {
    pub fn new(capacity: usize) -> LayoutCache {
        LayoutCache { capacity, entries: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// A network's structure and layout: from memory, else read (the layout from the store,
    /// or computed and stored); None if there is no such network.
    pub async fn get(&self, store: &Store, network: &ScopedKey) -> Result<Option<Drawn>> {
        let name = network.to_string();
        if let Some(found) = self.entries.lock().expect("layout lock").0.get(&name) {
            return Ok(Some(found.clone()));
        }
        let Some(structure) = store.console_network_structure(network).await? else { return Ok(None) };
        let positions = Arc::new(positions(store, &structure).await?);
        let drawn = (Arc::new(structure), positions);
        let mut entries = self.entries.lock().expect("layout lock");
        let (map, order) = &mut *entries;
        if map.insert(name.clone(), drawn.clone()).is_none() {
            order.push_back(name);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        Ok(Some(drawn))
    }
}

fn encode(positions: &Positions) -> String {
    let mut rows: Vec<(i64, f32, f32)> = positions.iter().map(|(id, (x, y))| (*id, *x, *y)).collect();
    rows.sort_by_key(|r| r.0);
    serde_json::to_string(&rows).expect("numbers encode")
}

fn decode(text: &str) -> Option<Positions> {
    let rows: Vec<(i64, f32, f32)> = serde_json::from_str(text).ok()?;
    Some(rows.into_iter().map(|(id, x, y)| (id, (x, y))).collect())
}

/// A network's layout: the stored one, else computed now (off the async executor) and
/// stored. A layout that cannot be stored is still used.
async fn positions(store: &Store, structure: &NetworkStructure) -> Result<Positions> {
    if let Some(found) = store.console_layout(structure.id).await?.as_deref().and_then(decode) {
        if structure.systems.iter().all(|s| found.contains_key(&s.id)) {
            return Ok(found);
        }
    }
    let nodes: Vec<i64> = structure.systems.iter().map(|s| s.id).collect();
    let edges: Vec<(i64, i64)> =
        structure.transformations.iter().filter(|t| t.systems.len() == 2).map(|t| (t.systems[0], t.systems[1])).collect();
    let positions = tokio::task::spawn_blocking(move || layout(&nodes, &edges)).await.unwrap_or_default();
    if let Err(e) = store.put_console_layout(structure.id, &encode(&positions)).await {
        tracing::warn!(error = %e, "console: keeping a network's layout failed");
    }
    Ok(positions)
}

/// Lays out the newest networks that have no stored layout yet (at most
/// [`WORKER_BATCH`]); how many there were.
pub async fn lay_out_new(store: &Store) -> Result<usize> {
    let networks = store.console_networks_without_layout(WORKER_BATCH).await?;
    for network in &networks {
        if let Some(structure) = store.console_network_structure(network).await? {
            positions(store, &structure).await?;
        }
    }
    Ok(networks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_through_their_text() {
        let positions: Positions = [(3, (1.5, 2.25)), (1, (0.0, 640.0)), (2, (999.5, 24.0))].into();
        let text = encode(&positions);
        assert_eq!(text, "[[1,0.0,640.0],[2,999.5,24.0],[3,1.5,2.25]]");
        assert_eq!(decode(&text), Some(positions));
        assert_eq!(decode("not json"), None);
    }
}
