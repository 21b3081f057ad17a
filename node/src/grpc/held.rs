//! Outputs of verified tasks held back until the requester pays for them (`withhold_output`).
//!
//! The node runs such a task before it is paid, so what a requester can leave unpaid is bounded:
//! a few outputs per caller, a bound on them all in count and in bytes (keys included; the oldest
//! goes first), and a short life that a failed payment does not renew.
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
/// Most outputs held for all callers together.
const MOST_HELD: usize = 4096;
/// Most bytes held for all callers together, keys included.
const MOST_BYTES: usize = 256 << 20;

/// Who asked for a held output, and for which task: the node the link proved (`None` for a
/// plaintext client on this machine), the task ID and the nonce.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub caller: Option<NodeId>,
    pub task_id: String,
    pub nonce: Bytes,
}

impl HeldKey {
    fn bytes(&self) -> usize {
        self.task_id.len() + self.nonce.len()
    }
}

/// An output, the plugin that made it (for pricing its reveal), the credit of the requester's
/// deposit it was run on (given back when the output is paid for or forgotten), and when it was
/// first held: its life counts from then, even when a failed payment puts it back.
#[derive(Debug)]
pub struct HeldOutput {
    pub output: Bytes,
    pub plugin: String,
    pub credit: Option<Credit>,
    pub held_at: Instant,
}

impl HeldOutput {
    fn bytes(&self) -> usize {
        self.output.len() + self.plugin.len()
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.held_at) >= HELD_FOR
    }
}

/// The outputs held now.
#[derive(Debug, Default)]
pub struct HeldResults {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    outputs: HashMap<HeldKey, HeldOutput>,
    /// Keys in the order they were held, oldest first; may name outputs taken since.
    order: VecDeque<HeldKey>,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &HeldKey) -> Option<HeldOutput> {
        let held = self.outputs.remove(key)?;
        self.bytes -= key.bytes() + held.bytes();
        Some(held)
    }

    /// Forgets outputs past their life, and the oldest ones while `more` outputs of `bytes` would
    /// not fit.
    fn make_room(&mut self, now: Instant, more: usize, bytes: usize) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .outputs
                .get(oldest)
                .is_none_or(|held| held.expired(now));
            let fits = self.outputs.len() + more <= MOST_HELD && self.bytes + bytes <= MOST_BYTES;
            if !expired && fits {
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
        let mut inner = self.lock();
        inner.make_room(Instant::now(), 0, 0);
        inner
            .outputs
            .keys()
            .filter(|key| key.caller == caller)
            .count()
            < MOST_PER_CALLER
    }

    /// Holds `output` until [`HELD_FOR`] after its `held_at`.
    pub fn hold(&self, key: HeldKey, output: HeldOutput) {
        self.hold_at(Instant::now(), key, output);
    }

    /// Takes the output held under `key`, if it is still held.
    pub fn take(&self, key: &HeldKey) -> Option<HeldOutput> {
        self.take_at(Instant::now(), key)
    }

    fn hold_at(&self, now: Instant, key: HeldKey, output: HeldOutput) {
        let mut inner = self.lock();
        inner.remove(&key);
        if output.expired(now) {
            return;
        }
        inner.make_room(now, 1, key.bytes() + output.bytes());
        inner.bytes += key.bytes() + output.bytes();
        inner.order.push_back(key.clone());
        inner.outputs.insert(key, output);
    }

    fn take_at(&self, now: Instant, key: &HeldKey) -> Option<HeldOutput> {
        let mut inner = self.lock();
        inner.make_room(now, 0, 0);
        // An output put back after a failed payment sits behind younger ones, so its own life is
        // checked here rather than left to `make_room`.
        inner.remove(key).filter(|held| !held.expired(now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("held results lock is never poisoned")
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
            held_at: Instant::now(),
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
        let big = Bytes::from(vec![0u8; MOST_BYTES / 2 - 64]);
        for task in ["a", "b", "c"] {
            held.hold(
                key(1, task),
                HeldOutput {
                    output: big.clone(),
                    plugin: "hello".to_owned(),
                    credit: None,
                    held_at: Instant::now(),
                },
            );
        }
        assert!(held.take(&key(1, "a")).is_none());
        assert!(held.take(&key(1, "b")).is_some());
        assert!(held.take(&key(1, "c")).is_some());
    }

    #[test]
    fn the_oldest_outputs_go_when_too_many_are_held() {
        let held = HeldResults::default();
        for task in 0..=MOST_HELD {
            held.hold(key((task % 200) as u8, &task.to_string()), output("o"));
        }
        assert_eq!(held.lock().outputs.len(), MOST_HELD);
        assert!(held.take(&key(0, "0")).is_none());
        assert!(held.take(&key(1, "1")).is_some());
    }

    #[test]
    fn keys_count_against_the_bytes() {
        let held = HeldResults::default();
        let long_id = "x".repeat(1000);
        held.hold(key(1, &long_id), output("out"));
        assert_eq!(held.lock().bytes, 1000 + 16 + "out".len() + "hello".len());
        held.take(&key(1, &long_id)).expect("held");
        assert_eq!(held.lock().bytes, 0);
    }

    #[test]
    fn an_output_is_forgotten_after_its_life_even_when_put_back() {
        let held = HeldResults::default();
        let start = Instant::now();
        let old = HeldOutput {
            held_at: start,
            ..output("out")
        };
        held.hold_at(start, key(1, "old"), old);
        let taken = held
            .take_at(start + HELD_FOR / 2, &key(1, "old"))
            .expect("held for its life");
        // A failed payment puts it back behind a younger output; it still ends on time.
        let young = HeldOutput {
            held_at: start + HELD_FOR / 2,
            ..output("out")
        };
        held.hold_at(start + HELD_FOR / 2, key(1, "young"), young);
        held.hold_at(start + HELD_FOR / 2, key(1, "old"), taken);
        let later = start + HELD_FOR + Duration::from_millis(1);
        assert!(held.take_at(later, &key(1, "old")).is_none());
        assert!(held.take_at(later, &key(1, "young")).is_some());
        assert_eq!(held.lock().bytes, 0);
    }
}
