//! What this node knows of other nodes from the tasks it sent them: how many run there now, and
//! how they went. Kept in memory; a restarted node learns again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::NodeId;

/// How fast the success rate follows outcomes: the weight of the newest one.
const SUCCESS_WEIGHT: f64 = 0.2;
/// Past this many nodes, the ones with nothing running and a clean record are forgotten, so
/// strangers cannot grow the map without end.
const MAX_NODES: usize = 4096;

/// One node's standing with this node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Tasks this node has running or waiting there now.
    pub in_flight: u32,
    /// Recent outcomes of tasks there, from 0 (all failed) to 1 (all succeeded, or none yet).
    pub success: f64,
}

impl Default for Standing {
    fn default() -> Self {
        Self {
            in_flight: 0,
            success: 1.0,
        }
    }
}

/// The standings of every node this node sent work to. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Standings(Arc<Mutex<HashMap<NodeId, Standing>>>);

impl Standings {
    /// A copy of the standings, to rank candidates without holding the lock.
    pub fn snapshot(&self) -> HashMap<NodeId, Standing> {
        self.lock().clone()
    }

    /// Notes a task sent to `node`; the guard notes its end when dropped.
    pub fn start(&self, node: NodeId) -> Running {
        let mut standings = self.lock();
        if standings.len() >= MAX_NODES {
            standings.retain(|_, standing| standing.in_flight > 0 || standing.success < 1.0);
        }
        standings.entry(node).or_default().in_flight += 1;
        Running {
            standings: self.clone(),
            node,
        }
    }

    /// Notes how a task on `node` went: `true` when it ran, `false` when the node failed it.
    pub fn record(&self, node: NodeId, succeeded: bool) {
        let mut standings = self.lock();
        let standing = standings.entry(node).or_default();
        standing.success = standing.success * (1.0 - SUCCESS_WEIGHT)
            + if succeeded { SUCCESS_WEIGHT } else { 0.0 };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Standing>> {
        self.0.lock().expect("standings lock is never poisoned")
    }
}

/// A task running on a node; dropping it notes its end.
#[derive(Debug)]
pub struct Running {
    standings: Standings,
    node: NodeId,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(standing) = self.standings.lock().get_mut(&self.node) {
            standing.in_flight = standing.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_tasks_are_counted_until_dropped_and_failures_lower_the_success_rate() {
        let standings = Standings::default();
        let node = NodeId::from(alloy_primitives::Address::repeat_byte(7));
        let first = standings.start(node);
        let second = standings.start(node);
        assert_eq!(standings.snapshot()[&node].in_flight, 2);
        drop(first);
        assert_eq!(standings.snapshot()[&node].in_flight, 1);
        drop(second);
        assert_eq!(standings.snapshot()[&node].in_flight, 0);

        standings.record(node, false);
        standings.record(node, false);
        let after_failures = standings.snapshot()[&node].success;
        assert!((after_failures - 0.64).abs() < 1e-9, "{after_failures}");
        standings.record(node, true);
        assert!(standings.snapshot()[&node].success > after_failures);
    }
}
