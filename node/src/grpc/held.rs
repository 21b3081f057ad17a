//! Outputs of verified tasks held back until the requester pays for them (`withhold_output`).
//!
//! The node runs such a task before it is paid, so what a requester can leave unpaid is bounded:
//! a few outputs per caller, a bound on them all (the oldest goes first), and a short life.
//! Outputs live in memory only: a restart loses them, as it would lose a task in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::identity::NodeId;
use crate::payments::payee::Credit;

/// How long an output waits for its requester to pay for it.
pub const HELD_FOR: Duration = Duration::from_secs(60);
/// Most outputs held for one caller at once.
const MOST_PER_CALLER: usize = 64;
/// Most bytes held for all callers together.
const MOST_BYTES: usize = 256 << 20;

/// Who asked for a held output, and for which task: the node the link proved (`None` for a
/// plaintext client on this machine), the task ID and the nonce.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub caller: Option<NodeId>,
    pub task_id: String,
    pub nonce: Bytes,
}

/// An output, the plugin that made it (for pricing its reveal), and the credit of the
/// requester's deposit it was run on, given back when the output is paid for or forgotten.
#[derive(Debug)]
pub struct HeldOutput {
    pub output: Bytes,
    pub plugin: String,
    pub credit: Option<Credit>,
}

/// The outputs held now.
#[derive(Debug, Default)]
pub struct HeldResults {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    outputs: HashMap<HeldKey, (Instant, HeldOutput)>,
    /// Keys in the order they were held, oldest first; may name outputs taken since.
    order: VecDeque<HeldKey>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &HeldKey) -> Option<HeldOutput> {
        let (_, held) = self.outputs.remove(key)?;
        self.bytes -= held.output.len();
        Some(held)
    }

    /// Forgets outputs past their life, and the oldest ones while more than `bytes` are held.
    fn make_room(&mut self, now: Instant, bytes: usize) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .outputs
                .get(oldest)
                .is_none_or(|(held_at, _)| now.duration_since(*held_at) >= HELD_FOR);
            if !expired && self.bytes + bytes <= MOST_BYTES {
                break;
            }
            let oldest = self.order.pop_front().expect("looked at above");
            self.remove(&oldest);
        }
    }
}

impl HeldResults {
    /// Whether `caller` may have one more output held: it has fewer than its share.
    pub fn has_room_for(&self, caller: Option<NodeId>) -> bool {
        let mut inner = self
            .inner
            .lock()
            .expect("held results lock is never poisoned");
        inner.make_room(Instant::now(), 0);
        inner
            .outputs
            .keys()
            .filter(|key| key.caller == caller)
            .count()
            < MOST_PER_CALLER
    }

    /// Holds `output` for [`HELD_FOR`].
    pub fn hold(&self, key: HeldKey, output: HeldOutput) {
        let mut inner = self
            .inner
            .lock()
            .expect("held results lock is never poisoned");
        inner.make_room(Instant::now(), output.output.len());
        inner.remove(&key);
        inner.bytes += output.output.len();
        inner.order.push_back(key.clone());
        inner.outputs.insert(key, (Instant::now(), output));
    }

    /// Takes the output held under `key`, if it is still held.
    pub fn take(&self, key: &HeldKey) -> Option<HeldOutput> {
        let mut inner = self
            .inner
            .lock()
            .expect("held results lock is never poisoned");
        inner.make_room(Instant::now(), 0);
        inner.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(caller: u8, task: &str) -> HeldKey {
        HeldKey {
            caller: Some(NodeId::from(alloy_primitives::Address::repeat_byte(caller))),
            task_id: task.to_owned(),
            nonce: Bytes::from_static(b"0123456789abcdef"),
        }
    }

    fn output(text: &'static str) -> HeldOutput {
        HeldOutput {
            output: Bytes::from_static(text.as_bytes()),
            plugin: "hello".to_owned(),
            credit: None,
        }
    }

    #[test]
    fn an_output_is_handed_over_once_and_only_to_its_caller() {
        let held = HeldResults::default();
        held.hold(key(1, "t"), output("out"));
        assert!(held.take(&key(2, "t")).is_none());
        assert_eq!(held.take(&key(1, "t")).expect("held").output, "out");
        assert!(held.take(&key(1, "t")).is_none());
        assert_eq!(held.inner.lock().expect("lock").bytes, 0);
    }

    #[test]
    fn a_caller_gets_a_bounded_share() {
        let held = HeldResults::default();
        for task in 0..MOST_PER_CALLER {
            assert!(held.has_room_for(key(1, "x").caller));
            held.hold(key(1, &task.to_string()), output("out"));
        }
        assert!(!held.has_room_for(key(1, "x").caller));
        assert!(held.has_room_for(key(2, "x").caller));
        held.take(&key(1, "0")).expect("held");
        assert!(held.has_room_for(key(1, "x").caller));
    }

    #[test]
    fn the_oldest_outputs_go_when_the_bytes_run_out() {
        let held = HeldResults::default();
        let big = Bytes::from(vec![0u8; MOST_BYTES / 2]);
        for task in ["a", "b", "c"] {
            held.hold(
                key(1, task),
                HeldOutput {
                    output: big.clone(),
                    plugin: "hello".to_owned(),
                    credit: None,
                },
            );
        }
        assert!(held.take(&key(1, "a")).is_none());
        assert!(held.take(&key(1, "b")).is_some());
        assert!(held.take(&key(1, "c")).is_some());
    }
}
