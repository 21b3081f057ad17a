//! The payment contract on its chain, as this node uses it: channel state (cached briefly), and
//! the transactions of both sides, signed with the node's key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::network::ReceiptResponse;
use alloy::primitives::{Address, B256, Bytes, TxHash, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::sol_types::Eip712Domain;
use sphere_contracts::SpherePayments::{self, SpherePaymentsErrors, SpherePaymentsInstance};
use sphere_contracts::voucher_domain;

use crate::error::{Error, ErrorCode};

/// A channel read from the chain (`None`: no such channel) and when.
type CachedRead = (Instant, Option<ChannelState>);

/// Size of the channel cache past which expired reads are dropped.
const CACHE_PRUNE_AT: usize = 4096;
/// Longest wait for a sent transaction to be mined.
const RECEIPT_WAIT: Duration = Duration::from_secs(120);

/// A channel as the contract holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelState {
    /// Who deposits and signs vouchers.
    pub requester: Address,
    /// Who redeems vouchers.
    pub provider: Address,
    /// Wei deposited in all.
    pub deposit: U256,
    /// Wei redeemed so far.
    pub redeemed: U256,
    /// Chain time (seconds) of the close request; 0 when none.
    pub close_requested_at: u64,
    /// Whether the channel is closed and refunded.
    pub closed: bool,
}

impl ChannelState {
    /// Returns whether the channel takes no new vouchers: closed, or its requester asked to close.
    pub fn is_closing(&self) -> bool {
        self.closed || self.close_requested_at != 0
    }
}

/// A mined transaction that changed the contract.
#[derive(Debug, Clone)]
pub struct Mined {
    /// The transaction's hash.
    pub tx: TxHash,
    /// Gas it used.
    pub gas_used: u64,
    /// What it cost in wei (gas used times effective gas price).
    pub fee: U256,
}

/// The payment contract, seen with the node's key. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Chain {
    contract: SpherePaymentsInstance<DynProvider>,
    chain_id: u64,
    domain: Eip712Domain,
    challenge_period_seconds: u64,
    cache_for: Duration,
    /// Channel reads by ID, absent channels included, so that vouchers naming made-up channels
    /// cost one chain read per ID and cache period, not one each.
    cache: Arc<Mutex<HashMap<B256, CachedRead>>>,
    /// Held from sending a transaction to its receipt: nonces are asked of the chain, so two
    /// transactions sent at once would get the same one.
    sending: Arc<tokio::sync::Mutex<()>>,
}

impl Chain {
    /// Returns the contract at `contract`, whose channel reads are cached for `cache_for`.
    pub fn new(
        contract: SpherePaymentsInstance<DynProvider>,
        chain_id: u64,
        challenge_period_seconds: u64,
        cache_for: Duration,
    ) -> Self {
        let domain = voucher_domain(chain_id, *contract.address());
        Self {
            contract,
            chain_id,
            domain,
            challenge_period_seconds,
            cache_for,
            cache: Arc::default(),
            sending: Arc::default(),
        }
    }

    /// The chain's ID.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The contract's address.
    pub fn address(&self) -> Address {
        *self.contract.address()
    }

    /// The EIP-712 domain vouchers are signed in.
    pub fn domain(&self) -> &Eip712Domain {
        &self.domain
    }

    /// Seconds between a close request and the moment the requester can close.
    pub fn challenge_period_seconds(&self) -> u64 {
        self.challenge_period_seconds
    }

    /// Returns the balance of `account` in wei.
    pub async fn balance(&self, account: Address) -> Result<U256, Error> {
        self.contract
            .provider()
            .get_balance(account)
            .await
            .map_err(|error| chain_unreachable(&error))
    }

    /// Returns a channel's state, from the cache when it is younger than the cache period and
    /// `fresh` is false. `None` when the contract has no such channel.
    pub async fn channel(&self, id: B256, fresh: bool) -> Result<Option<ChannelState>, Error> {
        if !fresh {
            let cache = self
                .cache
                .lock()
                .expect("channel cache lock is never poisoned");
            if let Some((read_at, state)) = cache.get(&id)
                && read_at.elapsed() < self.cache_for
            {
                return Ok(state.clone());
            }
        }
        let read = self
            .contract
            .channels(id)
            .call()
            .await
            .map_err(|error| chain_unreachable(&error))?;
        let state = (read.requester != Address::ZERO).then_some(ChannelState {
            requester: read.requester,
            provider: read.provider,
            deposit: read.deposit,
            redeemed: read.redeemed,
            close_requested_at: read.closeRequestedAt,
            closed: read.closed,
        });
        let mut cache = self
            .cache
            .lock()
            .expect("channel cache lock is never poisoned");
        if cache.len() >= CACHE_PRUNE_AT {
            cache.retain(|_, (read_at, _)| read_at.elapsed() < self.cache_for);
        }
        cache.insert(id, (Instant::now(), state.clone()));
        Ok(state)
    }

    /// Returns the IDs of every channel `requester` opened, from the contract's `ChannelOpened`
    /// events since the first block.
    pub async fn channels_opened_by(&self, requester: Address) -> Result<Vec<B256>, Error> {
        let opened = self
            .contract
            .ChannelOpened_filter()
            .topic2(requester.into_word())
            .from_block(0)
            .query()
            .await
            .map_err(|error| chain_unreachable(&error))?;
        Ok(opened
            .into_iter()
            .map(|(event, _)| event.channelId)
            .collect())
    }

    /// Opens a channel to `provider` with `deposit` wei; returns its ID.
    pub async fn open(&self, provider: Address, deposit: U256) -> Result<(B256, Mined), Error> {
        let receipt = self
            .send("open", self.contract.open(provider).value(deposit))
            .await?;
        let opened = receipt
            .decoded_log::<SpherePayments::ChannelOpened>()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::TargetError,
                    format!(
                        "opening the channel (transaction {}) emitted no ChannelOpened event",
                        receipt.transaction_hash
                    ),
                )
            })?;
        Ok((opened.data.channelId, mined(&receipt)))
    }

    /// Adds `amount` wei to a channel's deposit.
    pub async fn top_up(&self, id: B256, amount: U256) -> Result<Mined, Error> {
        let receipt = self
            .send("top_up", self.contract.topUp(id).value(amount))
            .await?;
        Ok(self.changed(id, &receipt))
    }

    /// Asks to close a channel; the challenge period starts.
    pub async fn request_close(&self, id: B256) -> Result<Mined, Error> {
        let receipt = self
            .send("request_close", self.contract.requestClose(id))
            .await?;
        Ok(self.changed(id, &receipt))
    }

    /// Closes a channel whose challenge period is over and takes back what was not redeemed.
    pub async fn close(&self, id: B256) -> Result<Mined, Error> {
        let receipt = self.send("close", self.contract.close(id)).await?;
        Ok(self.changed(id, &receipt))
    }

    /// Claims `amount` wei in all on a channel to this node, under the requester's voucher for
    /// `voucher_amount` with `signature` (which may promise more: the contract pays up to what
    /// is claimed).
    pub async fn redeem(
        &self,
        id: B256,
        voucher_amount: U256,
        signature: Bytes,
        amount: U256,
    ) -> Result<Mined, Error> {
        let call = self.contract.redeem(id, voucher_amount, signature, amount);
        let receipt = self.send("redeem", call).await?;
        Ok(self.changed(id, &receipt))
    }

    /// Sends `call` (a `kind` of transaction, for the metrics) as a transaction, one at a time,
    /// and returns its receipt once mined; a refusal by the contract comes back in its words, a
    /// mined revert as an error.
    async fn send<D: alloy::contract::CallDecoder>(
        &self,
        kind: &'static str,
        call: alloy::contract::CallBuilder<&DynProvider, D>,
    ) -> Result<Receipt, Error> {
        let outcome = self.send_one(call).await;
        crate::metrics::transaction(
            kind,
            outcome
                .as_ref()
                .map_or_else(|error| error.code.as_str(), |_| "ok"),
        );
        outcome
    }

    async fn send_one<D: alloy::contract::CallDecoder>(
        &self,
        call: alloy::contract::CallBuilder<&DynProvider, D>,
    ) -> Result<Receipt, Error> {
        let _one_at_a_time = self.sending.lock().await;
        let receipt = call
            .send()
            .await
            .map_err(refused)?
            .with_timeout(Some(RECEIPT_WAIT))
            .get_receipt()
            .await
            .map_err(|error| chain_unreachable(&error))?;
        if !receipt.status() {
            return Err(Error::new(
                ErrorCode::TargetError,
                format!(
                    "transaction {} was mined but reverted",
                    receipt.transaction_hash
                ),
            ));
        }
        Ok(receipt)
    }

    /// Forgets the cached state of channel `id`, which `receipt`'s transaction changed.
    fn changed(&self, id: B256, receipt: &Receipt) -> Mined {
        self.cache
            .lock()
            .expect("channel cache lock is never poisoned")
            .remove(&id);
        mined(receipt)
    }
}

/// A mined transaction's receipt.
type Receipt = <alloy::network::Ethereum as alloy::network::Network>::ReceiptResponse;

fn mined(receipt: &impl ReceiptResponse) -> Mined {
    Mined {
        tx: receipt.transaction_hash(),
        gas_used: receipt.gas_used(),
        fee: U256::from(receipt.gas_used()) * U256::from(receipt.effective_gas_price()),
    }
}

fn chain_unreachable(error: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::TargetUnreachable,
        format!("the payment chain did not answer: {error}"),
    )
}

/// Returns whether a node's answer to a transaction says the sender's balance is too low (geth
/// says "insufficient funds for gas * price + value", anvil "Insufficient funds ...", others
/// "gas required exceeds allowance").
fn is_insufficient_funds(message: &str) -> bool {
    let message = message.to_lowercase();
    message.contains("insufficient funds") || message.contains("exceeds allowance")
}

/// Turns a transaction the contract refused into an error that says why, in the contract's words.
fn refused(error: alloy::contract::Error) -> Error {
    let Some(reason) = error.as_decoded_interface_error::<SpherePaymentsErrors>() else {
        return if error.as_revert_data().is_some() {
            Error::new(
                ErrorCode::TargetError,
                format!("the payment contract refused the transaction: {error}"),
            )
        } else {
            let message = error.to_string();
            if is_insufficient_funds(&message) {
                Error::new(
                    ErrorCode::InsufficientFunds,
                    format!(
                        "this node's account cannot pay the deposit and gas of the transaction; \
                         fund it or ask for less: {message}"
                    ),
                )
            } else {
                chain_unreachable(&message)
            }
        };
    };
    use SpherePaymentsErrors as Refusal;
    let (code, message) = match reason {
        Refusal::NoSuchChannel(_) => (
            ErrorCode::ChannelNotFound,
            "the payment contract has no such channel".to_owned(),
        ),
        Refusal::NotRequester(_) => (
            ErrorCode::PermissionDenied,
            "only the channel's requester may do that".to_owned(),
        ),
        Refusal::NotProvider(_) => (
            ErrorCode::PermissionDenied,
            "only the channel's provider may redeem".to_owned(),
        ),
        Refusal::ChannelClosedAlready(_) => (
            ErrorCode::ChannelStateConflict,
            "the channel is closed already".to_owned(),
        ),
        Refusal::CloseAlreadyRequested(_) => (
            ErrorCode::ChannelStateConflict,
            "the channel's requester asked to close it already; it takes no more deposits"
                .to_owned(),
        ),
        Refusal::CloseNotRequested(_) => (
            ErrorCode::ChannelStateConflict,
            "closing needs a close request first".to_owned(),
        ),
        Refusal::ChallengePeriodRunning(running) => (
            ErrorCode::ChannelStateConflict,
            format!(
                "the challenge period is still running: the channel can be closed from chain time {}",
                running.closableAt
            ),
        ),
        Refusal::EmptyDeposit(_) => (
            ErrorCode::InvalidField,
            "the amount must be greater than 0".to_owned(),
        ),
        Refusal::ZeroProvider(_) => (
            ErrorCode::InvalidField,
            "the provider must not be the zero address".to_owned(),
        ),
        Refusal::BadSignature(_) => (
            ErrorCode::PaymentRequired,
            "the voucher is not signed by the channel's requester".to_owned(),
        ),
        Refusal::AmountNotAboveRedeemed(redeemed) => (
            ErrorCode::ChannelStateConflict,
            format!("{} wei are redeemed already", redeemed.redeemed),
        ),
        Refusal::AmountAboveVoucher(voucher) => (
            ErrorCode::PaymentRequired,
            format!(
                "the claim exceeds the voucher of {} wei",
                voucher.cumulativeAmount
            ),
        ),
        Refusal::AmountAboveDeposit(deposit) => (
            ErrorCode::PaymentRequired,
            format!("the voucher exceeds the deposit of {} wei", deposit.deposit),
        ),
        Refusal::TransferFailed(_) => (
            ErrorCode::TargetError,
            "the contract could not send the ETH".to_owned(),
        ),
        Refusal::ReentrancyGuardReentrantCall(_)
        | Refusal::InvalidShortString(_)
        | Refusal::StringTooLong(_) => (
            ErrorCode::TargetError,
            format!("the payment contract refused the transaction: {reason:?}"),
        ),
    };
    Error::new(code, message)
}
