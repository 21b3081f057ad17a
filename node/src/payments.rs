//! Payments through Sphere's payment contract (`contracts/`), with the node's own key.
//!
//! Off by default: a node runs without any chain. Turned on, the node checks at start-up that
//! the RPC endpoint answers, is the configured chain, and holds the payment contract at the
//! configured address, and refuses to start otherwise. It advertises its prices to other nodes,
//! pays for the work it sends through its channels ([`payer`]) and checks and redeems the
//! vouchers that pay for the work it does ([`payee`]).

pub mod amount;
pub mod chain;
mod ledger;
pub mod payee;
pub mod payer;

use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use sphere_contracts::SpherePayments;

pub use crate::config::{PaymentsConfig, Prices};
use crate::identity::NodeIdentity;
use crate::peers::Peers;
use crate::storage::db::Db;
use chain::Chain;
use payee::Payee;
use payer::Payer;

impl Prices {
    /// The prices a peer's terms give, when every one fits in 64 bits (as this node's own
    /// prices do).
    pub fn from_terms(terms: &sphere_proto::v1::PaymentTerms) -> Option<Self> {
        Some(Self {
            task_wei: terms.task_wei.parse().ok()?,
            task_wei_by_plugin: terms
                .task_wei_by_plugin
                .iter()
                .map(|(plugin, price)| Some((plugin.clone(), price.parse().ok()?)))
                .collect::<Option<_>>()?,
            storage_gib_day_wei: terms.storage_gib_day_wei.parse().ok()?,
            read_gib_wei: terms.read_gib_wei.parse().ok()?,
        })
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
    /// The node's payment records could not be read.
    #[error("could not read the payment records: {0}")]
    Storage(#[from] crate::storage::StorageError),
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

/// A node's payments: the contract, its prices, and both sides' bookkeeping. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payments {
    chain: Chain,
    own_address: Address,
    prices: Prices,
    storage_period_seconds: u64,
    /// Checks and redeems the vouchers paying this node.
    pub payee: Payee,
    /// Pays other nodes.
    pub payer: Payer,
}

/// Returns a provider that signs with `identity`'s key, for `url`, waiting at most `timeout` for
/// each answer: an endpoint that accepts and never answers would otherwise hold the node's
/// start, or a redeem, forever.
///
/// Nonces are asked of the chain for every transaction: alloy's default cache counts a nonce as
/// used even when the transaction is refused before it is sent, and every later transaction
/// then waits forever behind the gap. [`chain::Chain`] sends one transaction at a time.
fn connect(
    url: &str,
    identity: &NodeIdentity,
    timeout: Duration,
) -> Result<DynProvider, PaymentsError> {
    let unreachable = |reason: String| PaymentsError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let parsed = url
        .parse()
        .map_err(|error| unreachable(format!("not a URL: {error}")))?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|error| unreachable(format!("no HTTP client: {error}")))?;
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(identity.signer().clone()))
        .connect_reqwest(client, parsed)
        .erased())
}

impl Payments {
    /// Connects to the configured chain and contract, checking both, and loads the payment
    /// records from `db`; `None` when payments are off.
    pub async fn start(
        config: &PaymentsConfig,
        identity: &NodeIdentity,
        db: &Db,
        peers: &Peers,
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
        let provider = connect(url, identity, Duration::from_millis(config.rpc_timeout_ms))?;
        let unreachable = |error: &(dyn std::error::Error + 'static)| PaymentsError::Unreachable {
            url: url.to_owned(),
            reason: crate::error::followed_by_causes(error.to_string(), error.source()),
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
        let ContractAt::Sphere {
            challenge_period_seconds,
        } = contract_at(&provider, address)
            .await
            .map_err(|error| unreachable(&error))?
        else {
            return Err(PaymentsError::NoContract {
                address,
                chain_id: actual_chain,
            });
        };
        let chain = Chain::new(
            SpherePayments::new(address, provider),
            actual_chain,
            challenge_period_seconds,
            Duration::from_millis(config.channel_cache_ms),
        );
        let own_address = identity.signer().address();
        let payee = Payee::open(
            chain.clone(),
            db.clone(),
            own_address,
            U256::from(config.redeem_threshold_wei),
            Duration::from_millis(config.redeem_interval_ms),
        )
        .await?;
        let payer = Payer::open(
            chain.clone(),
            db.clone(),
            peers.clone(),
            identity.signer().clone(),
            config.prepaid_tasks,
        )
        .await?;
        Ok(Some(Self {
            chain,
            own_address,
            prices: config.prices.clone(),
            storage_period_seconds: config.storage_period_seconds,
            payee,
            payer,
        }))
    }

    /// Returns the price of a task on `plugin`.
    pub fn task_price(&self, plugin: &str) -> U256 {
        U256::from(self.prices.task_wei_on(plugin))
    }

    /// Returns the price of keeping `bytes` for one storage period, and the period's length in
    /// milliseconds.
    pub fn storage_period_price(&self, bytes: u64) -> (U256, u64) {
        (
            amount::storage_price(
                bytes,
                self.storage_period_seconds,
                U256::from(self.prices.storage_gib_day_wei),
            ),
            self.storage_period_seconds.saturating_mul(1000),
        )
    }

    /// Returns the price of reading `bytes` back.
    pub fn read_price(&self, bytes: u64) -> U256 {
        amount::price_per_gib(bytes, U256::from(self.prices.read_gib_wei))
    }

    /// Returns the terms other nodes see in `NodeService.GetInfo`.
    pub fn terms(&self) -> sphere_proto::v1::PaymentTerms {
        sphere_proto::v1::PaymentTerms {
            chain_id: self.chain.chain_id(),
            contract: self.chain.address().to_checksum(None),
            task_wei: self.prices.task_wei.to_string(),
            task_wei_by_plugin: self
                .prices
                .task_wei_by_plugin
                .iter()
                .map(|(plugin, price)| (plugin.clone(), price.to_string()))
                .collect(),
            storage_gib_day_wei: self.prices.storage_gib_day_wei.to_string(),
            read_gib_wei: self.prices.read_gib_wei.to_string(),
            storage_period_seconds: self.storage_period_seconds,
        }
    }

    /// Returns what `GET /payments` shows: settings, this node's balance, the channels it pays
    /// through and those that pay it, with totals.
    pub async fn summary(&self) -> Result<crate::api::PaymentsAnswer, crate::error::Error> {
        let balance = self.chain.balance(self.own_address).await?;
        let paying = self.payer.channels();
        let paid = self.payee.channels();
        let total = |amounts: &mut dyn Iterator<Item = U256>| {
            amounts
                .fold(U256::ZERO, |sum, amount| sum + amount)
                .to_string()
        };
        Ok(crate::api::PaymentsAnswer {
            enabled: true,
            chain_id: Some(self.chain.chain_id()),
            contract: Some(self.chain.address().to_checksum(None)),
            challenge_period_seconds: Some(self.chain.challenge_period_seconds()),
            address: Some(self.own_address.to_checksum(None)),
            balance_wei: Some(balance.to_string()),
            prices: Some(self.prices.clone()),
            spent_wei: Some(total(&mut paying.iter().map(|channel| channel.spent))),
            earned_wei: Some(total(&mut paid.iter().map(|channel| channel.charged))),
            redeemed_wei: Some(total(&mut paid.iter().map(|channel| channel.redeemed))),
            pending_wei: Some(total(&mut paid.iter().map(payee::IncomingChannel::pending))),
            channels_out: Some(paying.iter().map(Into::into).collect()),
            channels_in: Some(paid.iter().map(Into::into).collect()),
        })
    }
}

impl Payments {
    /// Sets the metrics of the channels both ways (at a scrape of `GET /metrics`).
    pub fn record_metrics(&self) {
        let wei = |amount: U256| u128::try_from(amount).map_or(f64::MAX, |wei| wei as f64);
        let paying = self.payer.channels();
        let phase_count = |phase| {
            paying
                .iter()
                .filter(|channel| channel.phase == phase)
                .count()
        };
        crate::metrics::payments(
            "out",
            &crate::metrics::ChannelTotals {
                channels: vec![
                    ("open", phase_count(payer::ChannelPhase::Open)),
                    ("closing", phase_count(payer::ChannelPhase::Closing)),
                    ("closed", phase_count(payer::ChannelPhase::Closed)),
                ],
                deposit_wei: paying.iter().map(|channel| wei(channel.deposit)).sum(),
                used_wei: paying.iter().map(|channel| wei(channel.spent)).sum(),
                redeemed_wei: 0.0,
            },
        );
        let paid = self.payee.channels();
        crate::metrics::payments(
            "in",
            &crate::metrics::ChannelTotals {
                channels: vec![("open", paid.len())],
                deposit_wei: paid.iter().map(|channel| wei(channel.deposit)).sum(),
                used_wei: paid.iter().map(|channel| wei(channel.charged)).sum(),
                redeemed_wei: paid.iter().map(|channel| wei(channel.redeemed)).sum(),
            },
        );
    }
}

/// What a chain holds at the address where the payment contract should be.
enum ContractAt {
    /// No code.
    Missing,
    /// Code that does not answer as the payment contract.
    Foreign,
    /// The payment contract.
    Sphere { challenge_period_seconds: u64 },
}

async fn contract_at(
    provider: &DynProvider,
    address: Address,
) -> Result<ContractAt, alloy::transports::TransportError> {
    if provider.get_code_at(address).await?.is_empty() {
        return Ok(ContractAt::Missing);
    }
    Ok(
        match SpherePayments::new(address, provider)
            .challengePeriod()
            .call()
            .await
        {
            Ok(challenge_period_seconds) => ContractAt::Sphere {
                challenge_period_seconds,
            },
            Err(_) => ContractAt::Foreign,
        },
    )
}

/// Deploys the payment contract to the chain at `rpc_url`, paying with `identity`'s key; returns
/// its address. When the chain already has the contract at `unless_at` (a chain that kept its
/// state), deploys nothing and returns that address.
pub async fn deploy(
    rpc_url: &str,
    identity: &NodeIdentity,
    challenge_period_seconds: u64,
    unless_at: Option<Address>,
) -> Result<Address, String> {
    let timeout = Duration::from_millis(PaymentsConfig::default().rpc_timeout_ms);
    let provider = connect(rpc_url, identity, timeout).map_err(|error| error.to_string())?;
    if let Some(address) = unless_at {
        let found = contract_at(&provider, address).await.map_err(|error| {
            format!("asking {rpc_url} for the code at {address} failed: {error}")
        })?;
        match found {
            ContractAt::Missing => {}
            ContractAt::Foreign => {
                return Err(format!(
                    "{address} holds a contract that is not Sphere's payment contract"
                ));
            }
            ContractAt::Sphere { .. } => return Ok(address),
        }
    }
    let contract = SpherePayments::deploy(provider, challenge_period_seconds)
        .await
        .map_err(|error| format!("deploying to {rpc_url} failed: {error}"))?;
    Ok(*contract.address())
}
