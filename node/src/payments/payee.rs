//! The provider's side: checking the voucher that pays for each piece of work, keeping the
//! vouchers of every channel, and redeeming the one it earned on a threshold, on an interval,
//! when the requester starts closing, on demand and on shutdown.
//!
//! A channel's vouchers are cumulative, and a requester may sign ahead of its work (a prepaid
//! window). Work is paid from the channel's credit: the largest voucher received minus what was
//! charged before (for a channel first seen, what was redeemed on chain counts as charged).
//! Checking reserves the price; the work's success charges it and stores the channel's record
//! before the answer leaves; a failure releases it. Concurrent tasks on one channel may deliver
//! their vouchers in any order, and a voucher already kept is not checked again. What is
//! redeemed is exactly what was charged, claimed under the largest voucher (the contract pays a
//! claim up to its voucher): credit that failed work or the window left is never redeemed, so
//! requesters never pay for work they did not get; their next work uses it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use sphere_contracts::{Voucher, voucher_signer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chain::{Chain, ChannelState};
use super::ledger::{Durability, Ledger, Record};
use crate::error::{Error, ErrorCode};
use crate::identity::NodeId;
use crate::storage::db::Db;

/// How many vouchers a channel remembers as checked after newer ones superseded them.
const SUPERSEDED_KEPT: usize = 4;
/// Key prefix of the provider's channel records.
const RECORD_PREFIX: &str = "payments/in/";
/// Longest wait between two looks at the channels with unredeemed vouchers, whatever the
/// redemption interval: a requester's close request must be seen within its challenge period.
const LONGEST_POLL: Duration = Duration::from_secs(5);

/// A voucher as the provider keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptVoucher {
    /// Wei promised in all.
    pub amount: U256,
    /// The requester's EIP-712 signature.
    pub signature: Bytes,
}

/// A redemption this node made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Redemption {
    /// When it was mined, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The cumulative amount redeemed.
    pub amount: U256,
    /// What it paid (the amount minus what was redeemed before).
    pub paid: U256,
    /// The transaction.
    pub tx: String,
    /// Gas it used.
    pub gas_used: u64,
}

impl Record for IncomingChannel {
    fn channel_id(&self) -> B256 {
        self.channel_id
    }

    fn version(&self) -> u64 {
        self.version
    }
}

/// A channel's redemption: made, or failed with why.
pub type RedemptionOutcome = Result<(B256, Redemption), (B256, Error)>;

/// What the provider knows of a channel that pays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingChannel {
    /// The channel's ID.
    pub channel_id: B256,
    /// Who pays.
    pub requester: Address,
    /// The channel's deposit, as last read from the chain.
    #[serde(default)]
    pub deposit: U256,
    /// The largest voucher received: the channel's credit, and what redemptions claim under.
    pub best: Option<KeptVoucher>,
    /// Wei charged for work done: what this node earned, and claims when it redeems.
    pub charged: U256,
    /// The largest amount this node redeemed on chain.
    pub redeemed: U256,
    /// The last redemption.
    pub last_redemption: Option<Redemption>,
    /// Since when (ms) part of what was charged has been waiting to be redeemed.
    pub pending_since_ms: Option<u64>,
    /// Bumped on every change, so that concurrent writers store the newest record once.
    #[serde(skip)]
    version: u64,
    /// Prices of work checked and running.
    #[serde(skip)]
    reserved: U256,
    /// Prices of work done on credit, not yet paid (held outputs of verified tasks).
    #[serde(skip)]
    credited: U256,
    /// The last vouchers that were the best before, checked when they arrived: concurrent work
    /// still brings them after a newer one.
    #[serde(skip)]
    superseded: VecDeque<KeptVoucher>,
}

impl IncomingChannel {
    /// A channel this node has no record of: a new one, or one whose record was lost. It may
    /// have been redeemed already, so what was redeemed counts as charged.
    fn new(channel_id: B256, state: &ChannelState) -> Self {
        Self {
            channel_id,
            requester: state.requester,
            deposit: state.deposit,
            best: None,
            charged: state.redeemed,
            redeemed: state.redeemed,
            last_redemption: None,
            pending_since_ms: None,
            version: 0,
            reserved: U256::ZERO,
            credited: U256::ZERO,
            superseded: VecDeque::new(),
        }
    }

    /// Returns the wei earned but not yet redeemed.
    pub fn pending(&self) -> U256 {
        self.charged.saturating_sub(self.redeemed)
    }

    /// Whether `voucher` was checked when it arrived: the best one, or one it superseded.
    fn keeps(&self, voucher: &ReceivedVoucher) -> bool {
        self.best
            .iter()
            .chain(&self.superseded)
            .any(|kept| kept.amount == voucher.amount && kept.signature == voucher.signature)
    }

    /// Makes `voucher`, checked, the channel's credit.
    fn take_best(&mut self, voucher: KeptVoucher) {
        if let Some(before) = self.best.replace(voucher) {
            if self.superseded.len() == SUPERSEDED_KEPT {
                self.superseded.pop_front();
            }
            self.superseded.push_back(before);
        }
    }
}

/// The provider's payment bookkeeping. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payee {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    chain: Chain,
    own_address: Address,
    channels: Ledger<IncomingChannel>,
    /// Serialises redemptions, so one voucher is never sent twice at once.
    redeeming: tokio::sync::Mutex<()>,
    redeem_threshold: U256,
    redeem_interval: Duration,
    wake_redeemer: Notify,
}

/// Work that a voucher paid for, not yet done. Dropping it without [`Reservation::charge`]
/// releases the price.
#[must_use = "a reservation is released unless charged"]
#[derive(Debug)]
pub struct Reservation {
    held: Option<(Payee, B256, U256)>,
}

impl Reservation {
    /// A reservation for free work.
    pub fn free() -> Self {
        Self { held: None }
    }

    /// Charges the work, now done, and returns once the channel's record is on the disk, with
    /// what the channel was charged in all (`None` for free work), for the requester's count.
    pub async fn charge(mut self) -> Result<Option<U256>, Error> {
        let Some((payee, channel_id, price)) = self.held.take() else {
            return Ok(None);
        };
        let (version, due, charged) = {
            let mut channels = payee.lock();
            let channel = channels
                .get_mut(&channel_id)
                .expect("a reserved channel stays known");
            channel.reserved -= price;
            channel.charged += price;
            channel
                .pending_since_ms
                .get_or_insert_with(crate::clock::now_ms);
            channel.version += 1;
            let due = channel.pending() >= payee.inner.redeem_threshold;
            (channel.version, due, channel.charged)
        };
        payee.store(channel_id, version).await?;
        if due {
            payee.inner.wake_redeemer.notify_one();
        }
        Ok(Some(charged))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((payee, channel_id, price)) = self.held.take()
            && let Some(channel) = payee.lock().get_mut(&channel_id)
        {
            channel.reserved -= price;
        }
    }
}

/// Work done on the credit of a channel's deposit, to be paid later. Dropping it gives the
/// credit back.
#[must_use = "credit is given back when dropped"]
#[derive(Debug)]
pub struct Credit {
    held: Option<(Payee, B256, U256)>,
}

impl Drop for Credit {
    fn drop(&mut self) {
        if let Some((payee, channel_id, price)) = self.held.take()
            && let Some(channel) = payee.lock().get_mut(&channel_id)
        {
            channel.credited -= price;
        }
    }
}

/// The parts of a voucher as received.
#[derive(Debug)]
struct ReceivedVoucher {
    channel_id: B256,
    amount: U256,
    signature: Bytes,
}

impl Payee {
    /// Loads the channel records from `db`.
    pub async fn open(
        chain: Chain,
        db: Db,
        own_address: Address,
        redeem_threshold: U256,
        redeem_interval: Duration,
    ) -> Result<Self, crate::storage::StorageError> {
        Ok(Self {
            inner: Arc::new(Inner {
                chain,
                own_address,
                channels: Ledger::load(db, RECORD_PREFIX).await?,
                redeeming: tokio::sync::Mutex::default(),
                redeem_threshold,
                redeem_interval,
                wake_redeemer: Notify::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<B256, IncomingChannel>> {
        self.inner.channels.lock()
    }

    /// Returns every channel that paid this node, as known now.
    pub fn channels(&self) -> Vec<IncomingChannel> {
        self.inner.channels.all()
    }

    /// What this node counts on each channel `requester` pays it through, with the largest
    /// voucher kept as proof of what the requester signed: told to that requester only (its
    /// link proves it), so that one whose count fell behind catches up before it pays again.
    pub fn counts_for(&self, requester: NodeId) -> Vec<sphere_proto::v1::ChannelCount> {
        let requester = requester.address();
        self.lock()
            .values()
            .filter(|channel| channel.requester == requester)
            .map(|channel| sphere_proto::v1::ChannelCount {
                channel_id: bytes::Bytes::copy_from_slice(channel.channel_id.as_slice()),
                charged_wei: channel.charged.to_string(),
                kept_voucher: channel.best.as_ref().map(|kept| sphere_proto::v1::Voucher {
                    channel_id: bytes::Bytes::copy_from_slice(channel.channel_id.as_slice()),
                    cumulative_amount_wei: kept.amount.to_string(),
                    signature: kept.signature.0.clone(),
                }),
            })
            .collect()
    }

    /// Checks that `voucher` pays `price` wei for `work` (said in refusals), and reserves it.
    /// `payer` is the node the work comes from, when known (proven on the link, or by the
    /// owner's signature): a channel's credit pays only for its own requester's work, whoever
    /// else shows one of its vouchers.
    pub async fn reserve(
        &self,
        voucher: Option<&sphere_proto::v1::Voucher>,
        price: U256,
        work: &str,
        payer: Option<NodeId>,
    ) -> Result<Reservation, Error> {
        if price.is_zero() {
            return Ok(Reservation::free());
        }
        let Some(voucher) = voucher else {
            return Err(Error::new(
                ErrorCode::PaymentRequired,
                format!(
                    "{work} costs {price} wei on this node and came without a voucher: turn payments on at the requesting node and open a payment channel to {} (sphere channel open)",
                    self.inner.own_address
                ),
            )
            .with_details(serde_json::json!({"price_wei": price.to_string()})));
        };
        let voucher = parse(voucher)?;
        let chain = &self.inner.chain;
        let mut state = self.channel_state(voucher.channel_id, false).await?;
        if voucher.amount > state.deposit {
            // The requester may have topped up since the state was cached.
            state = self.channel_state(voucher.channel_id, true).await?;
        }
        if state.provider != self.inner.own_address {
            return Err(refusal(format!(
                "channel {} pays {}, not this node ({})",
                voucher.channel_id, state.provider, self.inner.own_address
            )));
        }
        if state.is_closing() {
            return Err(refusal(format!(
                "channel {} is closing or closed and takes no more vouchers; open a new one",
                voucher.channel_id
            )));
        }
        if let Some(payer) = payer
            && payer.address() != state.requester
        {
            return Err(refusal(format!(
                "channel {} pays for the work of {}, not of {payer}",
                voucher.channel_id, state.requester
            )));
        }
        if voucher.amount > state.deposit {
            return Err(refusal(format!(
                "the voucher promises {} wei but channel {} holds a deposit of {} wei; top it up",
                voucher.amount, voucher.channel_id, state.deposit
            )));
        }
        let checked_before = self
            .lock()
            .get(&voucher.channel_id)
            .is_some_and(|channel| channel.keeps(&voucher));
        let signed = Voucher {
            channelId: voucher.channel_id,
            cumulativeAmount: voucher.amount,
        };
        if !checked_before
            && voucher_signer(&signed, chain.domain(), &voucher.signature) != Some(state.requester)
        {
            return Err(refusal(format!(
                "the voucher is not signed by channel {}'s requester {}",
                voucher.channel_id, state.requester
            )));
        }

        let mut channels = self.lock();
        let channel = channels
            .entry(voucher.channel_id)
            .or_insert_with(|| IncomingChannel::new(voucher.channel_id, &state));
        channel.deposit = state.deposit;
        let used = channel.charged + channel.reserved;
        let best = channel
            .best
            .as_ref()
            .map_or(U256::ZERO, |best| best.amount)
            .max(voucher.amount);
        let required = used + price;
        if best < required {
            // The largest voucher kept proves to the requester what it signed, so that one
            // that lost its records can catch up to what was charged (`Payer::catch_up`).
            let kept = channel.best.as_ref();
            return Err(Error::new(
                ErrorCode::PaymentRequired,
                format!(
                    "underpaid: {work} costs {price} wei and channel {} has {} wei of credit left; send a voucher for at least {required} wei in all",
                    voucher.channel_id,
                    best.saturating_sub(used)
                ),
            )
            .with_details(serde_json::json!({
                "channel_id": voucher.channel_id.to_string(),
                "price_wei": price.to_string(),
                "charged_wei": channel.charged.to_string(),
                "required_cumulative_wei": required.to_string(),
                "kept_voucher_wei": kept.map(|kept| kept.amount.to_string()),
                "kept_voucher_signature": kept.map(|kept| kept.signature.to_string()),
            })));
        }
        if channel
            .best
            .as_ref()
            .is_none_or(|kept| voucher.amount > kept.amount)
        {
            channel.take_best(KeptVoucher {
                amount: voucher.amount,
                signature: voucher.signature,
            });
        }
        channel.reserved += price;
        Ok(Reservation {
            held: Some((self.clone(), voucher.channel_id, price)),
        })
    }

    /// Puts `price` for `work` on the credit of `requester`'s channel `channel_id` to this node:
    /// refused unless the channel is open and its deposit covers the price beyond what was
    /// charged, what is reserved and what is on credit already. So what a requester leaves
    /// unpaid never exceeds what its deposit could pay.
    pub async fn credit(
        &self,
        channel_id: &[u8],
        requester: Option<NodeId>,
        price: U256,
        work: &str,
    ) -> Result<Credit, Error> {
        if price.is_zero() {
            return Ok(Credit { held: None });
        }
        let Some(requester) = requester else {
            return Err(refusal(format!(
                "{work} costs {price} wei and is paid after it ran only for a node that proves its key on the link"
            )));
        };
        let Ok(channel_id) = B256::try_from(channel_id) else {
            return Err(refusal(format!(
                "{work} costs {price} wei: name the payment channel (32 bytes) whose deposit covers it until it is paid"
            )));
        };
        let state = self.channel_state(channel_id, false).await?;
        if state.provider != self.inner.own_address
            || NodeId::from(state.requester) != requester
            || state.is_closing()
        {
            return Err(refusal(format!(
                "channel {channel_id} is not an open channel from {requester} to this node ({})",
                self.inner.own_address
            )));
        }
        let mut channels = self.lock();
        let channel = channels
            .entry(channel_id)
            .or_insert_with(|| IncomingChannel::new(channel_id, &state));
        channel.deposit = state.deposit;
        let owed = channel.charged + channel.reserved + channel.credited + price;
        if owed > channel.deposit {
            return Err(refusal(format!(
                "{work} costs {price} wei and channel {channel_id} has {} wei of its deposit left beyond the work done, running and awaiting payment; top it up",
                channel
                    .deposit
                    .saturating_sub(channel.charged + channel.reserved + channel.credited)
            )));
        }
        channel.credited += price;
        Ok(Credit {
            held: Some((self.clone(), channel_id, price)),
        })
    }

    async fn channel_state(&self, id: B256, fresh: bool) -> Result<ChannelState, Error> {
        self.inner.chain.channel(id, fresh).await?.ok_or_else(|| {
            refusal(format!(
                "the payment contract {} has no channel {id}",
                self.inner.chain.address()
            ))
        })
    }

    async fn store(&self, channel_id: B256, version: u64) -> Result<(), Error> {
        self.inner
            .channels
            .store(channel_id, version, Durability::Synced)
            .await
    }

    /// Redeems the best voucher of every channel that has something unredeemed, when `due`
    /// says so for its record and chain state; returns the redemptions made and the failures.
    async fn redeem_where(
        &self,
        due: impl Fn(&IncomingChannel, &ChannelState) -> bool,
    ) -> Vec<RedemptionOutcome> {
        let _one_at_a_time = self.inner.redeeming.lock().await;
        let waiting: Vec<IncomingChannel> = self
            .lock()
            .values()
            .filter(|channel| !channel.pending().is_zero())
            .cloned()
            .collect();
        let mut outcomes = Vec::new();
        for channel in waiting {
            let id = channel.channel_id;
            let outcome = async {
                let state = self.channel_state(id, true).await?;
                // Charged work was paid from the largest voucher's credit, so that one covers it.
                let Some(voucher) = channel.best.clone() else {
                    return Ok(None);
                };
                let earned = channel.charged;
                if state.closed || earned <= state.redeemed {
                    self.settled(id, state.redeemed, None).await?;
                    return Ok(None);
                }
                if !due(&channel, &state) {
                    return Ok(None);
                }
                let mined = self
                    .inner
                    .chain
                    .redeem(id, voucher.amount, voucher.signature, earned)
                    .await?;
                let redemption = Redemption {
                    at_ms: crate::clock::now_ms(),
                    amount: earned,
                    paid: earned - state.redeemed,
                    tx: mined.tx.to_string(),
                    gas_used: mined.gas_used,
                };
                tracing::info!(
                    channel = %id,
                    amount = %earned,
                    paid = %redemption.paid,
                    tx = %redemption.tx,
                    gas = mined.gas_used,
                    "redeemed a voucher"
                );
                self.settled(id, earned, Some(redemption.clone())).await?;
                Ok(Some(redemption))
            }
            .await;
            match outcome {
                Ok(Some(redemption)) => outcomes.push(Ok((id, redemption))),
                Ok(None) => {}
                Err(error) => outcomes.push(Err((id, error))),
            }
        }
        outcomes
    }

    async fn settled(
        &self,
        id: B256,
        redeemed: U256,
        redemption: Option<Redemption>,
    ) -> Result<(), Error> {
        let version = {
            let mut channels = self.lock();
            let channel = channels.get_mut(&id).expect("redeemed channels stay known");
            channel.redeemed = channel.redeemed.max(redeemed);
            if redemption.is_some() {
                channel.last_redemption = redemption;
            }
            if channel.pending().is_zero() {
                channel.pending_since_ms = None;
            }
            channel.version += 1;
            channel.version
        };
        self.store(id, version).await
    }

    /// Redeems every unredeemed voucher now.
    pub async fn redeem_all(&self) -> Vec<RedemptionOutcome> {
        self.redeem_where(|_, _| true).await
    }

    /// Redeems what is due, until `shutdown`; then redeems everything.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = self.inner.redeem_interval.min(LONGEST_POLL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.inner.wake_redeemer.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            let threshold = self.inner.redeem_threshold;
            let interval_ms =
                u64::try_from(self.inner.redeem_interval.as_millis()).unwrap_or(u64::MAX);
            let now = crate::clock::now_ms();
            let outcomes = self
                .redeem_where(|channel, state| {
                    channel.pending() >= threshold
                        || state.close_requested_at != 0
                        || channel
                            .pending_since_ms
                            .is_some_and(|since| now.saturating_sub(since) >= interval_ms)
                })
                .await;
            log_failures(&outcomes);
        }
    }
}

/// Logs the redemptions that failed; they are tried again later.
pub fn log_failures(outcomes: &[RedemptionOutcome]) {
    for (channel, error) in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        tracing::warn!(%channel, %error, "could not redeem a voucher; will try again");
    }
}

fn refusal(message: String) -> Error {
    Error::new(ErrorCode::PaymentRequired, message)
}

fn parse(voucher: &sphere_proto::v1::Voucher) -> Result<ReceivedVoucher, Error> {
    let channel_id = B256::try_from(&voucher.channel_id[..]).map_err(|_| {
        refusal(format!(
            "the voucher's channel ID has {} bytes; it must have 32",
            voucher.channel_id.len()
        ))
    })?;
    let amount: U256 = voucher.cumulative_amount_wei.parse().map_err(|_| {
        refusal(format!(
            "the voucher's amount {:?} is not a decimal number of wei",
            voucher.cumulative_amount_wei
        ))
    })?;
    if voucher.signature.len() != 65 {
        return Err(refusal(format!(
            "the voucher's signature has {} bytes; it must have 65",
            voucher.signature.len()
        )));
    }
    Ok(ReceivedVoucher {
        channel_id,
        amount,
        signature: Bytes::copy_from_slice(&voucher.signature),
    })
}

impl From<&IncomingChannel> for crate::api::IncomingChannelInfo {
    fn from(channel: &IncomingChannel) -> Self {
        let amount_of = |voucher: &Option<KeptVoucher>| {
            voucher
                .as_ref()
                .map_or(U256::ZERO, |voucher| voucher.amount)
                .to_string()
        };
        Self {
            channel_id: channel.channel_id.to_string(),
            requester: channel.requester.to_checksum(None),
            deposit_wei: channel.deposit.to_string(),
            earned_wei: channel.charged.to_string(),
            best_voucher_wei: amount_of(&channel.best),
            redeemed_wei: channel.redeemed.to_string(),
            pending_wei: channel.pending().to_string(),
            last_redemption: channel.last_redemption.as_ref().map(Into::into),
        }
    }
}

impl From<&Redemption> for crate::api::RedemptionInfo {
    fn from(redemption: &Redemption) -> Self {
        Self {
            at_ms: redemption.at_ms,
            amount_wei: redemption.amount.to_string(),
            paid_wei: redemption.paid.to_string(),
            tx: redemption.tx.clone(),
            gas_used: redemption.gas_used,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> IncomingChannel {
        IncomingChannel::new(
            B256::repeat_byte(1),
            &ChannelState {
                requester: Address::repeat_byte(2),
                provider: Address::repeat_byte(3),
                deposit: U256::from(1_000_000),
                redeemed: U256::ZERO,
                close_requested_at: 0,
                closed: false,
            },
        )
    }

    #[test]
    fn what_is_redeemable_is_what_was_charged_whatever_the_vouchers_promise() {
        let mut channel = channel();
        assert_eq!(channel.pending(), U256::ZERO);
        channel.best = Some(KeptVoucher {
            amount: U256::from(32_000),
            signature: Bytes::from_static(b"ahead"),
        });
        assert_eq!(channel.pending(), U256::ZERO);
        channel.charged = U256::from(3_000);
        assert_eq!(channel.pending(), U256::from(3_000));
        channel.redeemed = U256::from(3_000);
        assert_eq!(channel.pending(), U256::ZERO);
    }

    #[test]
    fn only_vouchers_checked_before_skip_the_signature_check() {
        let mut channel = channel();
        let channel_id = channel.channel_id;
        let received = |amount: u64, signature: &'static [u8]| ReceivedVoucher {
            channel_id,
            amount: U256::from(amount),
            signature: Bytes::from_static(signature),
        };
        assert!(!channel.keeps(&received(5_000, b"signed")));
        channel.best = Some(KeptVoucher {
            amount: U256::from(5_000),
            signature: Bytes::from_static(b"signed"),
        });
        assert!(channel.keeps(&received(5_000, b"signed")));
        assert!(!channel.keeps(&received(5_000, b"forged")));
        assert!(!channel.keeps(&received(4_000, b"signed")));
        // Vouchers a newer one superseded are still known, the last few of them.
        for amount in 1..=SUPERSEDED_KEPT as u64 {
            channel.take_best(KeptVoucher {
                amount: U256::from(5_000 + amount * 1_000),
                signature: Bytes::from_static(b"signed"),
            });
        }
        assert!(channel.keeps(&received(5_000, b"signed")));
        channel.take_best(KeptVoucher {
            amount: U256::from(100_000),
            signature: Bytes::from_static(b"signed"),
        });
        assert!(!channel.keeps(&received(5_000, b"signed")));
        assert!(channel.keeps(&received(6_000, b"signed")));
    }
}
