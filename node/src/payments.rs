//! Payments through Sphere's payment contract (`contracts/`), with the node's own key.
//!
//! Off by default: a node runs without any chain. Turned on, the node checks at start-up that
//! the RPC endpoint answers, is the configured chain, and holds the payment contract at the
//! configured address, and refuses to start otherwise. It advertises its prices (`GET /payments`).
//! Vouchers on tasks and storage, their checks and redemption are the next step (issue 5).

use std::collections::BTreeMap;

use alloy::network::EthereumWallet;
use alloy::primitives::Address;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use serde::{Deserialize, Serialize};
use sphere_contracts::SpherePayments;

use crate::identity::NodeIdentity;

/// The payments settings (`payments.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Whether this node pays and gets paid. Off: no chain is needed.
    pub enabled: bool,
    /// JSON-RPC endpoint of the chain, for example `http://127.0.0.1:8545`.
    pub rpc_url: Option<String>,
    /// The chain's ID; the node refuses an endpoint serving another chain.
    pub chain_id: Option<u64>,
    /// Address of the payment contract (`sphere payments deploy` prints it).
    pub contract: Option<String>,
    /// What this node charges.
    pub prices: Prices,
}

/// What a provider charges, in wei.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Prices {
    /// Price of one task on a plugin without a price of its own.
    pub task_wei: u64,
    /// Price of one task per plugin name.
    pub task_wei_by_plugin: BTreeMap<String, u64>,
    /// Price of storing one GiB for one day.
    pub storage_gib_day_wei: u64,
    /// Price of reading one GiB back.
    pub read_gib_wei: u64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            task_wei: 1_000_000_000_000,
            task_wei_by_plugin: BTreeMap::new(),
            storage_gib_day_wei: 10_000_000_000_000,
            read_gib_wei: 1_000_000_000_000,
        }
    }
}

/// Why payments could not be turned on. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// A required setting is missing.
    #[error("payments are enabled but `payments.{0}` is not set")]
    Missing(&'static str),
    /// The contract address does not parse.
    #[error("`payments.contract` is not an address: {0:?}")]
    BadContractAddress(String),
    /// The RPC endpoint does not answer.
    #[error("`payments.rpc_url` {url}: the chain does not answer: {reason}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint serves another chain.
    #[error("`payments.chain_id` is {expected} but {url} serves chain {actual}")]
    WrongChain {
        /// Configured chain.
        expected: u64,
        /// Chain served.
        actual: u64,
        /// The endpoint.
        url: String,
    },
    /// No payment contract at the address.
    #[error(
        "`payments.contract`: there is no Sphere payment contract at {address} on chain {chain_id}; deploy one with `sphere payments deploy`"
    )]
    NoContract {
        /// The address.
        address: Address,
        /// The chain.
        chain_id: u64,
    },
}

/// A node's connection to the payment contract.
#[derive(Debug, Clone)]
pub struct Payments {
    contract: SpherePayments::SpherePaymentsInstance<DynProvider>,
    chain_id: u64,
    challenge_period_seconds: u64,
    prices: Prices,
}

/// Returns a provider that signs with `identity`'s key, for `url`.
fn connect(url: &str, identity: &NodeIdentity) -> Result<DynProvider, PaymentsError> {
    let url = url.parse().map_err(|error| PaymentsError::Unreachable {
        url: url.to_owned(),
        reason: format!("not a URL: {error}"),
    })?;
    Ok(ProviderBuilder::new()
        .wallet(EthereumWallet::from(identity.signer().clone()))
        .connect_http(url)
        .erased())
}

impl Payments {
    /// Connects to the configured chain and contract, checking both; `None` when payments are off.
    pub async fn start(
        config: &PaymentsConfig,
        identity: &NodeIdentity,
    ) -> Result<Option<Self>, PaymentsError> {
        if !config.enabled {
            return Ok(None);
        }
        let url = config
            .rpc_url
            .as_deref()
            .ok_or(PaymentsError::Missing("rpc_url"))?;
        let expected_chain = config.chain_id.ok_or(PaymentsError::Missing("chain_id"))?;
        let contract_text = config
            .contract
            .as_deref()
            .ok_or(PaymentsError::Missing("contract"))?;
        let address: Address = contract_text
            .parse()
            .map_err(|_| PaymentsError::BadContractAddress(contract_text.to_owned()))?;
        let provider = connect(url, identity)?;
        let unreachable = |error: &dyn std::fmt::Display| PaymentsError::Unreachable {
            url: url.to_owned(),
            reason: error.to_string(),
        };
        let actual_chain = provider
            .get_chain_id()
            .await
            .map_err(|error| unreachable(&error))?;
        if actual_chain != expected_chain {
            return Err(PaymentsError::WrongChain {
                expected: expected_chain,
                actual: actual_chain,
                url: url.to_owned(),
            });
        }
        let no_contract = || PaymentsError::NoContract {
            address,
            chain_id: actual_chain,
        };
        let code = provider
            .get_code_at(address)
            .await
            .map_err(|error| unreachable(&error))?;
        if code.is_empty() {
            return Err(no_contract());
        }
        let contract = SpherePayments::new(address, provider);
        let challenge_period_seconds = contract
            .challengePeriod()
            .call()
            .await
            .map_err(|_| no_contract())?;
        Ok(Some(Self {
            contract,
            chain_id: actual_chain,
            challenge_period_seconds,
            prices: config.prices.clone(),
        }))
    }

    /// Returns the terms other nodes see in `NodeService.GetInfo`.
    pub fn terms(&self) -> sphere_proto::v1::PaymentTerms {
        sphere_proto::v1::PaymentTerms {
            chain_id: self.chain_id,
            contract: self.contract.address().to_checksum(None),
            task_wei: self.prices.task_wei.to_string(),
            task_wei_by_plugin: self
                .prices
                .task_wei_by_plugin
                .iter()
                .map(|(plugin, price)| (plugin.clone(), price.to_string()))
                .collect(),
            storage_gib_day_wei: self.prices.storage_gib_day_wei.to_string(),
            read_gib_wei: self.prices.read_gib_wei.to_string(),
        }
    }

    /// Returns what `GET /payments` shows.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": true,
            "chain_id": self.chain_id,
            "contract": self.contract.address().to_checksum(None),
            "challenge_period_seconds": self.challenge_period_seconds,
            "prices": self.prices,
        })
    }
}

/// Deploys the payment contract to the chain at `rpc_url`, paying with `identity`'s key; returns
/// its address.
pub async fn deploy(
    rpc_url: &str,
    identity: &NodeIdentity,
    challenge_period_seconds: u64,
) -> Result<Address, String> {
    let provider = connect(rpc_url, identity).map_err(|error| error.to_string())?;
    let contract = SpherePayments::deploy(provider, challenge_period_seconds)
        .await
        .map_err(|error| format!("deploying to {rpc_url} failed: {error}"))?;
    Ok(*contract.address())
}
