//! Authenticated links between nodes: TLS 1.3 with certificates bound to the node key.
//!
//! Each side presents a self-signed certificate that carries its secp256k1 node key and that
//! key's signature over the certificate's own public key (libp2p's TLS handshake specification,
//! through `libp2p-tls`), and proves in the handshake that it holds the certificate's key. A
//! completed handshake therefore proves both node IDs, and everything after it is encrypted. A
//! caller that names the node it means (`0xID@host:port`, or an ID found through the mesh)
//! refuses any other node at that address ([`LinkError::Impostor`]).
//!
//! The gRPC listener tells a TLS client from a plaintext one by the first byte. Plaintext
//! (HTTP/2 without TLS: grpcurl, tests, local tools) is served only to the addresses
//! `grpc.plaintext` allows, loopback by default; nodes always call each other over TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::connections::{ConnectionHandle, GuardedListener, GuardedStream};
use crate::identity::{NodeId, NodeIdentity};

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Both sides speak HTTP/2 inside the link.
const ALPN_H2: &[u8] = b"h2";
/// Links handed over that tonic has not taken yet.
const LINKS_WAITING: usize = 64;

/// Which clients may speak plaintext HTTP/2 to the gRPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plaintext {
    /// Clients on this machine (127.0.0.0/8, ::1) only.
    #[default]
    Loopback,
    /// None: every client must be a node with a key.
    Never,
    /// Any client, from anywhere. Only for networks where every host is trusted.
    Anywhere,
}

impl Plaintext {
    fn allows(self, client: SocketAddr) -> bool {
        match self {
            Self::Loopback => client.ip().to_canonical().is_loopback(),
            Self::Never => false,
            Self::Anywhere => true,
        }
    }
}

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The node at the address is not the node the caller named.
    #[error("the node at {address} is {actual}, not {expected}")]
    Impostor {
        /// The address called.
        address: String,
        /// The node the caller named.
        expected: NodeId,
        /// The node that answered.
        actual: NodeId,
    },
    /// The TLS handshake failed, or the certificate does not prove a node key.
    #[error("could not authenticate the node at {address}: {reason}")]
    Handshake {
        /// The address called.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// No TCP connection.
    #[error("could not connect to {address}: {source}")]
    Connect {
        /// The address called.
        address: String,
        /// What the network said.
        source: io::Error,
    },
}

/// This node's TLS settings for both directions, made once at start-up from the node key.
#[derive(Clone)]
pub struct LinkKeys {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("LinkKeys").finish_non_exhaustive()
    }
}

impl LinkKeys {
    /// Makes the certificates (one for each direction, with fresh certificate keys) that
    /// `identity`'s key signs.
    pub fn new(identity: &NodeIdentity) -> Self {
        let secret =
            libp2p_identity::secp256k1::SecretKey::try_from_bytes(identity.signer().to_bytes().0)
                .expect("a node key is a valid secp256k1 secret key");
        let keypair =
            libp2p_identity::Keypair::from(libp2p_identity::secp256k1::Keypair::from(secret));
        let provider = crypto_provider();
        // rustls's own single-certificate setters parse the certificate with webpki, which
        // refuses libp2p's critical extension; the key is loaded and presented as it is.
        let certified = || {
            let (certificate, key) = libp2p_tls::certificate::generate(&keypair)
                .expect("a self-signed certificate can always be made");
            let key = provider
                .key_provider
                .load_private_key(key)
                .expect("the certificate's key is one rustls signs with");
            Arc::new(rustls::sign::SingleCertAndKey::from(
                rustls::sign::CertifiedKey::new(vec![certificate], key),
            ))
        };
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the suites are TLS 1.3 suites")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeCertificateVerifier))
            .with_client_cert_resolver(certified());
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        // The server name means nothing here: the certificate names the node.
        client.enable_sni = false;
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the suites are TLS 1.3 suites")
            .with_client_cert_verifier(Arc::new(NodeCertificateVerifier))
            .with_cert_resolver(certified());
        server.alpn_protocols = vec![ALPN_H2.to_vec()];
        Self {
            client: Arc::new(client),
            server: Arc::new(server),
        }
    }

    /// A connector for tonic that links to the node at the URI it is given and, when
    /// `expected` is set, refuses any other. Each node it reaches is written to `reached`.
    pub fn connector(
        &self,
        expected: Option<NodeId>,
        reached: Arc<Mutex<Option<NodeId>>>,
    ) -> Connector {
        Connector {
            config: Arc::clone(&self.client),
            expected,
            reached,
        }
    }
}

/// The TLS 1.3 suites links offer, in order: AES-GCM first, which CPUs do in hardware
/// (libp2p-tls's own configurations put ChaCha20-Poly1305 first, which costs every link about
/// three times the CPU per byte where AES is in hardware).
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// libp2p's TLS handshake checks, both ways, through libp2p-tls's public certificate module
/// (its own verifier is not public): exactly one certificate, whose libp2p extension carries
/// a node key's signature over the certificate's key and whose self-signature holds, and a
/// handshake signed by that certificate's key. Which node it is, the caller checks after the
/// handshake ([`node_id_of`]).
#[derive(Debug)]
struct NodeCertificateVerifier;

impl NodeCertificateVerifier {
    fn check_presented(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a node presents exactly one certificate".into(),
            ));
        }
        libp2p_tls::certificate::parse(end_entity)?;
        Ok(())
    }

    fn check_signature(
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        libp2p_tls::certificate::parse(certificate)?.verify_signature(
            signed.scheme,
            message,
            signed.signature(),
        )?;
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn schemes() -> Vec<rustls::SignatureScheme> {
        use rustls::SignatureScheme;
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }

    fn no_tls12() -> rustls::Error {
        rustls::Error::General("node links speak TLS 1.3 only".into())
    }
}

impl rustls::client::danger::ServerCertVerifier for NodeCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Self::check_presented(end_entity, intermediates)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        Self::schemes()
    }
}

impl rustls::server::danger::ClientCertVerifier for NodeCertificateVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Self::check_presented(end_entity, intermediates)?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signed: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(Self::no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signed: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, certificate, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        Self::schemes()
    }
}

/// The node ID a peer's certificate proves. The signatures in it were checked in the handshake
/// (`NodeCertificateVerifier`); this reads the node key out and refuses keys that are not
/// secp256k1.
pub fn node_id_of(certificates: Option<&[CertificateDer<'_>]>) -> Result<NodeId, String> {
    let certificate = certificates
        .and_then(<[CertificateDer<'_>]>::first)
        .ok_or("the peer presented no certificate")?;
    let certificate =
        libp2p_tls::certificate::parse(certificate).map_err(|error| error.to_string())?;
    let peer_id = certificate.peer_id();
    let public_key = libp2p_identity::PublicKey::try_decode_protobuf(peer_id.as_ref().digest())
        .map_err(|error| format!("the certificate's key is unreadable: {error}"))?
        .try_into_secp256k1()
        .map_err(|_| "the certificate's key is not a secp256k1 node key".to_owned())?;
    let uncompressed = public_key.to_bytes_uncompressed();
    let point: &[u8; 64] = uncompressed[1..]
        .try_into()
        .expect("an uncompressed point is 0x04 and 64 bytes");
    Ok(NodeId::from_public_key(point))
}

/// Makes TLS links to other nodes for a tonic channel (see [`LinkKeys::connector`]).
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    expected: Option<NodeId>,
    reached: Arc<Mutex<Option<NodeId>>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = LinkError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, LinkError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.link(uri).await })
    }
}

impl Connector {
    async fn link(
        self,
        uri: http::Uri,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, LinkError> {
        let address = uri.authority().map(ToString::to_string).unwrap_or_default();
        let tcp = crate::channel::connect_tcp(&uri)
            .await
            .map_err(|source| LinkError::Connect {
                address: address.clone(),
                source,
            })?;
        let name = ServerName::try_from("sphere.invalid").expect("a valid DNS name");
        let tls = tokio_rustls::TlsConnector::from(self.config)
            .connect(name, tcp)
            .await
            .map_err(|error| LinkError::Handshake {
                address: address.clone(),
                reason: error.to_string(),
            })?;
        let actual = node_id_of(tls.get_ref().1.peer_certificates()).map_err(|reason| {
            LinkError::Handshake {
                address: address.clone(),
                reason,
            }
        })?;
        *self.reached.lock().expect("lock is never poisoned") = Some(actual);
        match self.expected {
            Some(expected) if expected != actual => Err(LinkError::Impostor {
                address,
                expected,
                actual,
            }),
            _ => Ok(TokioIo::new(tls)),
        }
    }
}

/// A connection to the gRPC listener: a TLS link from a node, or plaintext from a client that
/// `grpc.plaintext` allows.
pub enum Link {
    /// Plaintext HTTP/2.
    Plain(GuardedStream),
    /// A TLS link from a node that proved its key.
    Tls(Box<tokio_rustls::server::TlsStream<GuardedStream>>),
}

impl Link {
    fn guarded(&self) -> &GuardedStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl tonic::transport::server::Connected for Link {
    type ConnectInfo = ConnectionHandle;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.guarded().handle()
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts the gRPC listener's connections and hands tonic the links whose handshake
/// succeeded. Handshakes run side by side (a slow client holds up only itself), each within
/// `handshake_timeout`; the listener's limits bound how many there are, evicting pending
/// connections as they do before tonic sees them.
pub fn incoming(
    mut listener: GuardedListener,
    keys: &LinkKeys,
    plaintext: Plaintext,
    handshake_timeout: Duration,
) -> impl futures_util::Stream<Item = Result<Link, io::Error>> + Send + use<> {
    let (sender, receiver) = mpsc::channel::<Link>(LINKS_WAITING);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&keys.server));
    tokio::spawn(async move {
        loop {
            let (stream, client) = tokio::select! {
                _ = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (sender, acceptor) = (sender.clone(), acceptor.clone());
            tokio::spawn(async move {
                let link =
                    tokio::time::timeout(handshake_timeout, accept(stream, acceptor, plaintext))
                        .await;
                match link {
                    Ok(Ok(link)) => {
                        let _ = sender.send(link).await;
                    }
                    Ok(Err(reason)) => {
                        tracing::debug!(%client, reason, "refused a gRPC connection");
                    }
                    Err(_) => {
                        tracing::debug!(%client, "a gRPC connection did not finish its handshake in time")
                    }
                }
            });
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        let link = receiver.recv().await?;
        Some((Ok(link), receiver))
    })
}

async fn accept(
    stream: GuardedStream,
    acceptor: tokio_rustls::TlsAcceptor,
    plaintext: Plaintext,
) -> Result<Link, String> {
    let mut first = [0u8; 1];
    if stream
        .peek(&mut first)
        .await
        .map_err(|error| error.to_string())?
        == 0
    {
        return Err("closed before speaking".to_owned());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let client = stream.peer_addr().map_err(|error| error.to_string())?;
        if !plaintext.allows(client) {
            return Err(format!(
                "plaintext from {client}, which grpc.plaintext ({plaintext:?}) does not allow"
            ));
        }
        return Ok(Link::Plain(stream));
    }
    let tls = acceptor
        .accept(stream)
        .await
        .map_err(|error| format!("TLS handshake failed: {error}"))?;
    // Only nodes link: the certificate must carry a secp256k1 node key.
    let node = node_id_of(tls.get_ref().1.peer_certificates())?;
    tls.get_ref().0.set_linked_node(node);
    Ok(Link::Tls(Box::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_by_default() {
        let local: SocketAddr = "127.0.0.1:5".parse().expect("address");
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().expect("address");
        let remote: SocketAddr = "192.0.2.7:5".parse().expect("address");
        assert!(Plaintext::default().allows(local));
        assert!(Plaintext::default().allows(mapped));
        assert!(!Plaintext::default().allows(remote));
        assert!(!Plaintext::Never.allows(local));
        assert!(Plaintext::Anywhere.allows(remote));
    }

    /// Runs a handshake between `client` and `server` in memory; returns both connections.
    fn handshake(
        client: &LinkKeys,
        server: &LinkKeys,
    ) -> (rustls::ClientConnection, rustls::ServerConnection) {
        let name = ServerName::try_from("node").expect("name");
        let mut client =
            rustls::ClientConnection::new(Arc::clone(&client.client), name).expect("client");
        let mut server = rustls::ServerConnection::new(Arc::clone(&server.server)).expect("server");
        let mut wire = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            wire.clear();
            client.write_tls(&mut wire).expect("client writes");
            server.read_tls(&mut &wire[..]).expect("server reads");
            server.process_new_packets().expect("server accepts");
            wire.clear();
            server.write_tls(&mut wire).expect("server writes");
            client.read_tls(&mut &wire[..]).expect("client reads");
            client.process_new_packets().expect("client accepts");
        }
        (client, server)
    }

    #[test]
    fn links_prove_both_node_ids_and_use_aes_gcm() {
        let (a, b) = (NodeIdentity::generate(), NodeIdentity::generate());
        let (client, server) = handshake(&LinkKeys::new(&a), &LinkKeys::new(&b));
        assert_eq!(node_id_of(client.peer_certificates()), Ok(b.id()));
        assert_eq!(node_id_of(server.peer_certificates()), Ok(a.id()));
        assert_eq!(
            client.negotiated_cipher_suite().map(|suite| suite.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}
