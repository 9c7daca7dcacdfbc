//! A network as strategies see it: chemical systems as nodes, transformations as directed
//! edges `stateA → stateB` (a `NonTransformation` is a loop on its one system) — the
//! networkx `MultiDiGraph` gufe's `AlchemicalNetwork.graph` builds.

/// One transformation: the indices of its two end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub a: usize,
    pub b: usize,
}

/// Nodes are `0..nodes`; edges refer to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    pub nodes: usize,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// networkx's `degree` of every node in a multigraph: incident edges, a loop counting
    /// twice (once out, once in).
    pub fn degrees(&self) -> Vec<u64> {
        let mut d = vec![0u64; self.nodes];
        for e in &self.edges {
            d[e.a] += 1;
            d[e.b] += 1;
        }
        d
    }

    /// The weakly connected components (gufe's `connected_subgraphs`), each as the
    /// indices of its edges, in order of their first edge. Isolated nodes have no edges
    /// and nothing to weigh, so they are left out.
    pub fn components(&self) -> Vec<Vec<usize>> {
        let mut parent: Vec<usize> = (0..self.nodes).collect();
        fn find(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for e in &self.edges {
            let (ra, rb) = (find(&mut parent, e.a), find(&mut parent, e.b));
            if ra != rb {
                parent[ra] = rb;
            }
        }
        let mut index_of_root = vec![usize::MAX; self.nodes];
        let mut out: Vec<Vec<usize>> = Vec::new();
        for (i, e) in self.edges.iter().enumerate() {
            let r = find(&mut parent, e.a);
            if index_of_root[r] == usize::MAX {
                index_of_root[r] = out.len();
                out.push(Vec::new());
            }
            out[index_of_root[r]].push(i);
        }
        out
    }

    /// Eccentricity of every node touched by `component` (edge indices), in the
    /// undirected graph of that component (networkx's `eccentricity(G.to_undirected())`):
    /// the largest number of edges on a shortest path to another node of the component.
    /// Nodes outside the component get `None`.
    pub fn eccentricities(&self, component: &[usize]) -> Vec<Option<u32>> {
        let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); self.nodes];
        let mut members = Vec::new();
        for &i in component {
            let e = self.edges[i];
            for n in [e.a, e.b] {
                if adjacency[n].is_empty() {
                    members.push(n);
                }
            }
            if e.a != e.b {
                adjacency[e.a].push(e.b);
                adjacency[e.b].push(e.a);
            } else {
                // a loop: the node belongs to the component even without neighbours
                adjacency[e.a].push(e.a);
            }
        }
        let mut ecc = vec![None; self.nodes];
        let mut dist = vec![u32::MAX; self.nodes];
        let mut queue = std::collections::VecDeque::new();
        for &start in &members {
            for &m in &members {
                dist[m] = u32::MAX;
            }
            dist[start] = 0;
            queue.push_back(start);
            let mut far = 0;
            while let Some(n) = queue.pop_front() {
                far = far.max(dist[n]);
                for &m in &adjacency[n] {
                    if dist[m] == u32::MAX {
                        dist[m] = dist[n] + 1;
                        queue.push_back(m);
                    }
                }
            }
            ecc[start] = Some(far);
        }
        ecc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(nodes: usize, edges: &[(usize, usize)]) -> Graph {
        Graph { nodes, edges: edges.iter().map(|&(a, b)| Edge { a, b }).collect() }
    }

    #[test]
    fn degrees_count_loops_twice_and_parallel_edges_each() {
        let g = graph(4, &[(0, 1), (1, 0), (1, 2), (3, 3)]);
        assert_eq!(g.degrees(), vec![2, 3, 1, 2]);
    }

    #[test]
    fn components_ignore_direction_and_skip_isolated_nodes() {
        // 0 -> 1 <- 2 is one weak component; 3 <- 4 another; 5 is isolated
        let g = graph(6, &[(0, 1), (4, 3), (2, 1)]);
        assert_eq!(g.components(), vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn eccentricities_of_a_path_and_a_star() {
        // path 0 - 1 - 2 - 3 (directions mixed)
        let g = graph(5, &[(0, 1), (2, 1), (2, 3)]);
        let c = &g.components()[0];
        assert_eq!(g.eccentricities(c), vec![Some(3), Some(2), Some(2), Some(3), None]);
        // star around 0 plus a loop on the centre
        let g = graph(4, &[(0, 1), (0, 2), (3, 0), (0, 0)]);
        assert_eq!(g.eccentricities(&g.components()[0]), vec![Some(1), Some(2), Some(2), Some(2)]);
        // a loop alone
        let g = graph(1, &[(0, 0)]);
        assert_eq!(g.eccentricities(&[0]), vec![Some(0)]);
    }
}
