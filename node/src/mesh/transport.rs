//! Gossip's UDP transport, counted and timed: every datagram sent and received goes into the
//! metrics (`sphere_gossip_bytes_total`), so an operator sees what membership costs, and the
//! time from a gossip round's first message to a member until its answer is that member's
//! round-trip time, measured without sending anything more.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};

/// Chitchat's transport `T`, with each socket's traffic counted and round trips timed.
pub(super) struct CountingTransport<T> {
    inner: T,
    round_trips: Arc<RoundTrips>,
}

impl<T> CountingTransport<T> {
    pub(super) fn new(inner: T, round_trips: Arc<RoundTrips>) -> Self {
        Self { inner, round_trips }
    }
}

#[async_trait::async_trait]
impl<T: Transport> Transport for CountingTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: self.inner.open(listen_addr).await?,
            round_trips: self.round_trips.clone(),
        }))
    }
}

/// Round-trip times of gossip, per address gossiped with.
#[derive(Debug, Default)]
pub(super) struct RoundTrips(Mutex<RoundTripState>);

#[derive(Debug, Default)]
struct RoundTripState {
    /// When the last unanswered round was opened with each address.
    opened: HashMap<SocketAddr, Instant>,
    /// Smoothed round-trip time per address, in milliseconds.
    smoothed_ms: HashMap<SocketAddr, f64>,
}

/// Addresses remembered at most; gossip can name any number of them.
const ADDRESSES_MAX: usize = 4_096;
/// Weight of a new sample in the smoothed time (TCP's SRTT uses 1/8).
const SAMPLE_WEIGHT: f64 = 0.125;

impl RoundTrips {
    /// The smoothed round-trip time to `address`, once measured.
    pub(super) fn rtt_ms(&self, address: SocketAddr) -> Option<f64> {
        let state = self.0.lock().expect("round-trip lock is never poisoned");
        state
            .smoothed_ms
            .get(&address)
            .map(|ms| (ms * 100.0).round() / 100.0)
    }

    fn opened(&self, to: SocketAddr) {
        let mut state = self.0.lock().expect("round-trip lock is never poisoned");
        if state.opened.len() >= ADDRESSES_MAX {
            state.opened.clear();
        }
        state.opened.insert(to, Instant::now());
    }

    fn answered(&self, from: SocketAddr) {
        let mut state = self.0.lock().expect("round-trip lock is never poisoned");
        let Some(opened) = state.opened.remove(&from) else {
            return;
        };
        let sample = opened.elapsed().as_secs_f64() * 1000.0;
        if state.smoothed_ms.len() >= ADDRESSES_MAX {
            state.smoothed_ms.clear();
        }
        state
            .smoothed_ms
            .entry(from)
            .and_modify(|smoothed| *smoothed += SAMPLE_WEIGHT * (sample - *smoothed))
            .or_insert(sample);
    }
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    round_trips: Arc<RoundTrips>,
}

#[async_trait::async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let opens_round = matches!(envelope.message, ChitchatMessage::Syn { .. });
        let message = kind(&envelope.message);
        let outcome = self.inner.send(to, envelope).await?;
        if opens_round {
            self.round_trips.opened(to);
        }
        crate::metrics::gossip("sent", message, outcome.num_bytes_sent);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        if matches!(outcome.envelope.message, ChitchatMessage::SynAck { .. }) {
            self.round_trips.answered(outcome.from_addr);
        }
        crate::metrics::gossip(
            "received",
            kind(&outcome.envelope.message),
            outcome.num_bytes_received,
        );
        Ok(outcome)
    }
}

/// The metrics' name for a kind of gossip message.
fn kind(message: &ChitchatMessage) -> &'static str {
    match message {
        ChitchatMessage::Syn { .. } => "syn",
        ChitchatMessage::SynAck { .. } => "syn_ack",
        ChitchatMessage::Ack { .. } => "ack",
        ChitchatMessage::BadCluster => "bad_cluster",
    }
}
