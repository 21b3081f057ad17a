//! Where nodes listen: a node's gRPC address (`host:port`), on whose port number it also
//! gossips, as a type of its own so that no unchecked string reaches a connection.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where a node listens for gRPC, and for gossip on the same port number: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeAddress(String);

impl NodeAddress {
    /// The address, as `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.0)
    }
}

impl std::str::FromStr for NodeAddress {
    type Err = Error;

    /// `host:port`, or `http://host:port`.
    fn from_str(text: &str) -> Result<Self, Error> {
        let uri = target_uri(text)?;
        Ok(Self(uri.trim_start_matches("http://").to_owned()))
    }
}

impl TryFrom<String> for NodeAddress {
    type Error = Error;

    fn try_from(text: String) -> Result<Self, Error> {
        text.parse()
    }
}

impl From<NodeAddress> for String {
    fn from(address: NodeAddress) -> Self {
        address.0
    }
}

impl From<std::net::SocketAddr> for NodeAddress {
    fn from(address: std::net::SocketAddr) -> Self {
        Self(address.to_string())
    }
}

impl std::fmt::Display for NodeAddress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl PartialEq<str> for NodeAddress {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Turns a target as users write it (`host:port`, or a full `http://` URI) into a URI.
pub fn target_uri(target: &str) -> Result<String, Error> {
    let target = target.trim();
    if target.is_empty() {
        return Err(Error::invalid_field("target", "must not be empty"));
    }
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let parsed: tonic::transport::Uri = uri.parse().map_err(|error| {
        Error::invalid_field("target", format!("{target:?} is not an address: {error}"))
    })?;
    if parsed.scheme_str() != Some("http") || parsed.port_u16().is_none() {
        return Err(Error::invalid_field(
            "target",
            format!("{target:?} must be host:port, for example 127.0.0.1:8081"),
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_host_port_and_uris() {
        assert_eq!(
            target_uri("127.0.0.1:8081").expect("ok"),
            "http://127.0.0.1:8081"
        );
        assert_eq!(target_uri("http://node:9").expect("ok"), "http://node:9");
        for bad in ["", "127.0.0.1", "ftp://x:1", "a b:1"] {
            assert!(target_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_address_reads_as_host_port_and_keeps_its_form_in_json() {
        let address: NodeAddress = "http://127.0.0.1:8081".parse().expect("ok");
        assert_eq!(address.as_str(), "127.0.0.1:8081");
        assert_eq!(
            serde_json::to_string(&address).expect("JSON"),
            "\"127.0.0.1:8081\""
        );
        assert!(serde_json::from_str::<NodeAddress>("\"nowhere\"").is_err());
    }
}
