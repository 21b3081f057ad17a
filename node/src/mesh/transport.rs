//! Gossip's UDP transport, counted: every datagram sent and received goes into the metrics
//! (`sphere_gossip_bytes_total`), so an operator sees what membership costs.

use std::net::SocketAddr;

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};

/// Chitchat's transport `T`, with each socket's traffic counted.
pub(super) struct CountingTransport<T>(pub T);

#[async_trait::async_trait]
impl<T: Transport> Transport for CountingTransport<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket(self.0.open(listen_addr).await?)))
    }
}

struct CountingSocket(Box<dyn Socket>);

#[async_trait::async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.0.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.0.send(to, envelope).await?;
        crate::metrics::gossip("sent", outcome.num_bytes_sent);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.0.recv().await?;
        crate::metrics::gossip("received", outcome.num_bytes_received);
        Ok(outcome)
    }
}
