//! The requester's side: its channels to providers, what each provider charges, and a signed
//! voucher for each piece of work sent.
//!
//! Per channel the requester tracks the largest amount it signed, what was spent (work that
//! succeeded) and what is in flight. Work needs a voucher for what was spent, plus what is in
//! flight, plus the new work's price; the last voucher signed is sent again while it covers
//! that, so credit left by failed work is used again instead of being signed away twice. A new
//! voucher for a task pays `prepaid_tasks` tasks ahead, so that one signature serves that many
//! tasks (the provider redeems only the work it did; the window bounds what a provider that
//! stopped working could keep).
//!
//! The count is written lazily, with each new voucher and at shutdown; what must survive a crash
//! is a bound on what was signed (`signed_ceiling`, written durably before any voucher passes
//! it, in steps of [`CEILING_STEP_PRICES`] prices). After a crash, or when an answer was lost,
//! the provider says what it charged: in its next answer, in its refusal of a voucher, and in
//! its `GetInfo`, which is asked before the first payment after a start, every [`TERMS_CACHE`]
//! and after an answer was lost (so that work paid exactly, such as an upload that cannot be
//! sent again, is not refused first). The requester catches up to it when that is within what
//! it signed, or within the recovered bound: a lying provider can gain at most one step, once
//! per crash.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};
use sphere_contracts::{Voucher, sign_voucher, voucher_signer};
use sphere_proto::v1::{ChannelCount, GetInfoRequest, GetInfoResponse, PaymentTerms};

use super::chain::{Chain, Mined};
use super::ledger::{Durability, Ledger, Record};
use crate::error::{Error, ErrorCode};
use crate::peers::{Peers, Target};
use crate::storage::db::Db;

/// Key prefix of the requester's channel records.
const RECORD_PREFIX: &str = "payments/out/";
/// How far, in prices of the work at hand, the durable bound on signed vouchers is moved ahead
/// of the largest voucher: one synced write per this many pieces of work.
const CEILING_STEP_PRICES: u64 = 256;
/// How long a provider's advertised terms are used before they are asked for again.
const TERMS_CACHE: Duration = Duration::from_secs(30);

impl Record for OutgoingChannel {
    fn channel_id(&self) -> B256 {
        self.channel_id
    }

    fn version(&self) -> u64 {
        self.version
    }
}

/// Where a channel stands, as the requester last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelPhase {
    /// Takes vouchers.
    Open,
    /// The requester asked to close; closable after the challenge period.
    Closing,
    /// Closed and refunded.
    Closed,
}

/// A channel this node pays through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutgoingChannel {
    /// The channel's ID.
    pub channel_id: B256,
    /// Who is paid.
    pub provider: Address,
    /// Wei deposited in all.
    pub deposit: U256,
    /// The largest cumulative amount signed.
    pub signed: U256,
    /// No voucher was ever signed above this; written durably before one is.
    #[serde(default)]
    pub signed_ceiling: U256,
    /// Wei spent on work that succeeded.
    pub spent: U256,
    /// Where the channel stands.
    pub phase: ChannelPhase,
    /// When it was opened, in milliseconds since the Unix epoch.
    pub opened_at_ms: u64,
    /// Wei refunded at close.
    pub refunded: Option<U256>,
    #[serde(skip)]
    version: u64,
    #[serde(skip)]
    in_flight: U256,
    /// The ceiling read at start-up: vouchers up to it may have been signed before a crash.
    #[serde(skip)]
    recovered_ceiling: U256,
    /// The version at which `signed_ceiling` last moved.
    #[serde(skip)]
    ceiling_version: u64,
    /// The last voucher signed, sent again while it covers the work.
    #[serde(skip)]
    last_voucher: Option<(U256, alloy::primitives::Bytes)>,
    /// An answer was lost (the call timed out or broke): the provider may have charged work
    /// this node did not count, so its count is asked for before the next payment.
    #[serde(skip)]
    recount: bool,
}

impl OutgoingChannel {
    /// What a voucher for work of `price` must promise.
    fn next_amount(&self, price: U256) -> U256 {
        (self.spent + self.in_flight + price).max(self.signed)
    }

    /// Wei of the deposit not yet promised to work done or running.
    pub fn remaining(&self) -> U256 {
        self.deposit.saturating_sub(self.spent + self.in_flight)
    }

    /// Whether this node may have signed a voucher for `amount`: as recorded, within the bound
    /// recovered after a crash, or as `proven_signed` (a voucher shown with its signature).
    fn may_have_signed(&self, amount: U256, proven_signed: U256) -> bool {
        amount <= self.signed.max(proven_signed).max(self.recovered_ceiling)
    }

    /// Raises the count of what was spent to `spent`, from `charged`, what the provider says it
    /// charged in all, when that is within what this node may have signed: the provider can
    /// redeem what was signed anyway, so agreeing costs nothing, and this node's count may be
    /// behind after a crash (it is written lazily), after work whose answer never arrived, or
    /// after it lost its records (key-only recovery). The next voucher is a new one, paying
    /// ahead of the new count. Returns whether the count moved.
    fn catch_up_to(&mut self, charged: U256, spent: U256, proven_signed: U256) -> bool {
        if spent <= self.spent || !self.may_have_signed(charged, proven_signed) {
            return false;
        }
        tracing::warn!(
            channel = %self.channel_id,
            counted = %self.spent,
            %charged,
            "the provider counts more work on this channel than this node did; catching up"
        );
        self.spent = spent;
        self.signed = self.signed.max(proven_signed).max(charged);
        self.last_voucher = None;
        // Catching up within the recovered bound happens once per crash.
        self.recovered_ceiling = U256::ZERO;
        self.version += 1;
        true
    }
}

/// The work a payment is for.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// A task on a plugin (`None`: the target's default plugin).
    Task(Option<&'a str>),
    /// Keeping an object of this many bytes for one storage period.
    Store(u64),
    /// Reading this many bytes back.
    Read(u64),
}

impl Work<'_> {
    /// How many of this work's price a new voucher pays: tasks are paid ahead, the rest exactly.
    fn prices_per_voucher(&self, prepaid_tasks: u64) -> u64 {
        match self {
            Self::Task(_) => prepaid_tasks,
            Self::Store(_) | Self::Read(_) => 1,
        }
    }

    /// Returns the work's price in `info`'s terms, and says what the work is.
    fn price(&self, info: &GetInfoResponse, terms: &PaymentTerms) -> Result<(U256, String), Error> {
        match self {
            Self::Task(plugin) => {
                let name = match plugin {
                    Some(name) => Some((*name).to_owned()),
                    None => info
                        .plugins
                        .iter()
                        .find(|summary| summary.is_default)
                        .map(|summary| summary.name.clone()),
                };
                let price = name
                    .as_ref()
                    .and_then(|name| terms.task_wei_by_plugin.get(name))
                    .unwrap_or(&terms.task_wei);
                let what = format!(
                    "a task on plugin {}",
                    name.as_deref().unwrap_or("(default)")
                );
                Ok((wei(price, "task_wei")?, what))
            }
            Self::Store(bytes) => {
                let per_gib_day = wei(&terms.storage_gib_day_wei, "storage_gib_day_wei")?;
                Ok((
                    super::amount::storage_price(*bytes, terms.storage_period_seconds, per_gib_day),
                    format!("storing {bytes} bytes for one period"),
                ))
            }
            Self::Read(bytes) => {
                let per_gib = wei(&terms.read_gib_wei, "read_gib_wei")?;
                Ok((
                    super::amount::price_per_gib(*bytes, per_gib),
                    format!("reading {bytes} bytes"),
                ))
            }
        }
    }
}

fn wei(text: &str, term: &str) -> Result<U256, Error> {
    text.parse().map_err(|_| {
        Error::new(
            ErrorCode::TargetError,
            format!("the target advertises a `{term}` of {text:?}, which is not an amount of wei"),
        )
    })
}

/// A voucher handed out for one piece of work, until the work's outcome is known. Dropping it
/// without [`Payment::settle`] counts the work as failed.
#[must_use = "a payment must be settled with the work's outcome"]
#[derive(Debug)]
pub struct Payment {
    held: Option<(Payer, B256, U256)>,
    voucher: sphere_proto::v1::Voucher,
}

impl Payment {
    fn channel_id(&self) -> B256 {
        B256::try_from(&self.voucher.channel_id[..]).expect("set from a B256")
    }

    /// The voucher to send with the work.
    pub fn voucher(&self) -> sphere_proto::v1::Voucher {
        self.voucher.clone()
    }

    /// Records the work's outcome: spent when it succeeded, free again when it failed. A
    /// provider's refusal of the voucher as too small brings this node's count up to what the
    /// provider says it charged, when that is within what this node signed (see
    /// [`Payer::catch_up`]).
    /// Returns whether it caught up after a refusal, so the work may be tried again with a new
    /// voucher.
    pub async fn settle<T>(self, outcome: &Result<T, Error>) -> bool {
        self.settle_counted(outcome, None).await
    }

    /// [`Payment::settle`], for an answer that says what the provider charged on the channel
    /// in all (`charged`): this node's count catches up to it as to a refusal's.
    pub async fn settle_counted<T>(
        mut self,
        outcome: &Result<T, Error>,
        charged: Option<U256>,
    ) -> bool {
        let Some((payer, channel_id, price)) = self.held.take() else {
            return false;
        };
        let answer_lost = outcome.as_ref().err().is_some_and(|error| {
            matches!(
                error.code,
                ErrorCode::TargetTimeout | ErrorCode::TargetUnreachable
            )
        });
        payer.release(channel_id, price, outcome.is_ok(), answer_lost);
        let answered = charged.and_then(|charged| payer.catch_up_answered(channel_id, charged));
        let refused = outcome
            .as_ref()
            .err()
            .and_then(|error| payer.catch_up(error));
        // The count after each piece of work is written with the next new voucher (and at
        // shutdown); one that moved to the provider's is written now, lazily.
        if let Some(version) = refused.or(answered)
            && let Err(error) = payer.store(channel_id, version, Durability::Lazy).await
        {
            tracing::warn!(%error, channel = %channel_id, "could not store the channel's record");
        }
        refused.is_some()
    }
}

/// Makes `call` with a voucher paying `target` for `work` (none when payments are off here or
/// the target charges nothing). When the target refuses the voucher as too small and this node
/// catches up with the target's count of the channel, pays again and makes the call once more.
/// Returns the answer with its payment, which the caller settles by how the work ended; a
/// refusal is settled here. `error_of` reads a failure as the target's error, `failure_of`
/// makes a failure of an error in paying.
pub async fn paying<T, E, Call>(
    payer: Option<&Payer>,
    target: &Target,
    work: Work<'_>,
    mut call: impl FnMut(Option<sphere_proto::v1::Voucher>) -> Call,
    error_of: impl Fn(&E) -> Error,
    failure_of: impl Fn(Error) -> E,
) -> Result<(T, Option<Payment>), E>
where
    Call: Future<Output = Result<T, E>>,
{
    let mut tries_left = 2;
    loop {
        tries_left -= 1;
        let payment = match payer {
            Some(payer) => payer.pay(target, work).await.map_err(&failure_of)?,
            None => None,
        };
        let failure = match call(payment.as_ref().map(Payment::voucher)).await {
            Ok(answer) => return Ok((answer, payment)),
            Err(failure) => failure,
        };
        let caught_up = match payment {
            Some(payment) => payment.settle::<()>(&Err(error_of(&failure))).await,
            None => false,
        };
        if !(caught_up && tries_left > 0) {
            return Err(failure);
        }
    }
}

impl Drop for Payment {
    fn drop(&mut self) {
        if let Some((payer, channel_id, price)) = self.held.take() {
            // The work was dropped unanswered: it may have run and been charged.
            payer.release(channel_id, price, false, true);
        }
    }
}

/// A voucher handed out by [`Payer::sign`], and the writes it needs.
struct Signed {
    payment: Payment,
    /// The channel's version at which its bound on signed vouchers last moved.
    ceiling_version: u64,
    /// The channel's version, when the voucher is a new one.
    new_voucher_version: Option<u64>,
}

/// The requester's payment bookkeeping. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    chain: Chain,
    peers: Peers,
    signer: PrivateKeySigner,
    channels: Ledger<OutgoingChannel>,
    targets: Mutex<HashMap<Target, (Instant, Arc<GetInfoResponse>)>>,
    prepaid_tasks: u64,
}

impl Payer {
    /// Loads the channel records from `db`.
    pub async fn open(
        chain: Chain,
        db: Db,
        peers: Peers,
        signer: PrivateKeySigner,
        prepaid_tasks: u64,
    ) -> Result<Self, crate::storage::StorageError> {
        let channels: Ledger<OutgoingChannel> = Ledger::load(db, RECORD_PREFIX).await?;
        for channel in channels.lock().values_mut() {
            channel.recovered_ceiling = channel.signed_ceiling.max(channel.signed);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                chain,
                peers,
                signer,
                channels,
                targets: Mutex::default(),
                prepaid_tasks,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<B256, OutgoingChannel>> {
        self.inner.channels.lock()
    }

    /// Returns every channel this node pays through.
    pub fn channels(&self) -> Vec<OutgoingChannel> {
        self.inner.channels.all()
    }

    /// Returns one channel.
    pub fn channel(&self, id: B256) -> Result<OutgoingChannel, Error> {
        self.lock().get(&id).cloned().ok_or_else(|| not_ours(id))
    }

    /// Returns what `target` says about itself, asking it at most every [`TERMS_CACHE`].
    pub async fn target_info(&self, target: &Target) -> Result<Arc<GetInfoResponse>, Error> {
        if let Some((asked_at, info)) = self
            .inner
            .targets
            .lock()
            .expect("target cache lock is never poisoned")
            .get(target)
            && asked_at.elapsed() < TERMS_CACHE
        {
            return Ok(Arc::clone(info));
        }
        let info = self
            .inner
            .peers
            .node(target)
            .get_info(GetInfoRequest {})
            .await
            .map_err(|status| crate::peers::remote_error(&status, target))?
            .into_inner();
        if !info.your_channels.is_empty() {
            self.catch_up_counts(target, &info.your_channels).await?;
        }
        let info = Arc::new(info);
        let mut targets = self
            .inner
            .targets
            .lock()
            .expect("target cache lock is never poisoned");
        // Targets come from requests: what would be asked for again anyway is not kept.
        targets.retain(|_, (asked_at, _)| asked_at.elapsed() < TERMS_CACHE);
        targets.insert(target.clone(), (Instant::now(), Arc::clone(&info)));
        Ok(info)
    }

    /// Adopts what `target` says it counts on the channels this node pays it through, as from
    /// a refusal (see [`OutgoingChannel::catch_up_to`]), and writes the channels that moved.
    async fn catch_up_counts(&self, target: &Target, counts: &[ChannelCount]) -> Result<(), Error> {
        let provider = self.inner.peers.node_id(target).await?.address();
        let mut moved = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for count in counts {
            let (Ok(channel_id), Ok(charged)) = (
                B256::try_from(&count.channel_id[..]),
                count.charged_wei.parse::<U256>(),
            ) else {
                continue;
            };
            // Each of this node's own channels to the provider once: a proof costs a signature
            // recovery, and the provider could list anything, any number of times.
            let ours = self
                .lock()
                .get(&channel_id)
                .is_some_and(|channel| channel.provider == provider);
            if !ours || !seen.insert(channel_id) {
                continue;
            }
            let kept = count.kept_voucher.as_ref().and_then(|kept| {
                Some((
                    kept.cumulative_amount_wei.parse().ok()?,
                    alloy::primitives::Bytes::from(kept.signature.clone()),
                ))
            });
            let proven_signed = self.proven_signed(channel_id, kept);
            let mut channels = self.lock();
            let Some(channel) = channels.get_mut(&channel_id) else {
                continue;
            };
            // Work in flight may be charged already, its answer on the way.
            let spent = charged.saturating_sub(channel.in_flight);
            if channel.catch_up_to(charged, spent, proven_signed) {
                moved.push((channel_id, channel.version));
            }
        }
        for (channel_id, version) in moved {
            self.store(channel_id, version, Durability::Lazy).await?;
        }
        Ok(())
    }

    /// What this node provably signed on `channel_id`: the amount of `kept` when it carries
    /// this node's signature, else nothing.
    fn proven_signed(
        &self,
        channel_id: B256,
        kept: Option<(U256, alloy::primitives::Bytes)>,
    ) -> U256 {
        kept.filter(|(amount, signature)| {
            let voucher = Voucher {
                channelId: channel_id,
                cumulativeAmount: *amount,
            };
            voucher_signer(&voucher, self.inner.chain.domain(), signature)
                == Some(self.inner.signer.address())
        })
        .map_or(U256::ZERO, |(amount, _)| amount)
    }

    /// Whether an answer from `provider` was lost since the last payment (clearing it).
    fn take_recount(&self, provider: Address) -> bool {
        let mut wanted = false;
        for channel in self.lock().values_mut() {
            if channel.provider == provider {
                wanted |= std::mem::take(&mut channel.recount);
            }
        }
        wanted
    }

    fn forget_info(&self, target: &Target) {
        self.inner
            .targets
            .lock()
            .expect("target cache lock is never poisoned")
            .remove(target);
    }

    /// Returns a voucher paying `target` for `work`, or `None` when the target does not charge
    /// for it.
    pub async fn pay(&self, target: &Target, work: Work<'_>) -> Result<Option<Payment>, Error> {
        let info = self.target_info(target).await?;
        let Some(terms) = &info.payment_terms else {
            return Ok(None);
        };
        self.check_same_contract(target, terms)?;
        let (price, what) = work.price(&info, terms)?;
        if price.is_zero() {
            return Ok(None);
        }
        // The node its link proved, whatever it says about itself.
        let provider = self.inner.peers.node_id(target).await?.address();
        if self.take_recount(provider) {
            self.forget_info(target);
            self.target_info(target).await?;
        }
        let ahead = work.prices_per_voucher(self.inner.prepaid_tasks);
        let signed = self.sign(target, provider, price, ahead, &what)?;
        let channel_id = signed.payment.channel_id();
        // Before the voucher leaves, the bound on what was signed must be on the disk (this
        // returns at once when it is, and waits for a write under way otherwise).
        self.store(channel_id, signed.ceiling_version, Durability::Synced)
            .await?;
        // The count is written once per new voucher, lazily: a count lost in a crash is caught
        // up from the provider's next answer.
        if let Some(version) = signed.new_voucher_version
            && let Err(error) = self.store(channel_id, version, Durability::Lazy).await
        {
            tracing::warn!(%error, channel = %channel_id, "could not store the channel's record");
        }
        Ok(Some(signed.payment))
    }

    /// The open channel to `target` with the most left, if any: the one whose deposit covers
    /// work that `target` is paid for after it ran.
    pub async fn channel_to(&self, target: &Target) -> Result<Option<B256>, Error> {
        let provider = self.inner.peers.node_id(target).await?.address();
        Ok(self
            .lock()
            .values()
            .filter(|channel| channel.provider == provider && channel.phase == ChannelPhase::Open)
            .max_by_key(|channel| channel.remaining())
            .map(|channel| channel.channel_id))
    }

    /// Returns the voucher of the open channel to `provider` with the most left that pays for
    /// work of `price`: the last one signed while it covers the work, else a new one paying
    /// `ahead` prices (within the deposit).
    fn sign(
        &self,
        target: &Target,
        provider: Address,
        price: U256,
        ahead: u64,
        what: &str,
    ) -> Result<Signed, Error> {
        let mut channels = self.lock();
        let channel = channels
            .values_mut()
            .filter(|channel| channel.provider == provider && channel.phase == ChannelPhase::Open)
            .max_by_key(|channel| channel.remaining());
        let Some(channel) = channel else {
            return Err(Error::new(
                ErrorCode::PaymentRequired,
                format!(
                    "{what} on {target} costs {price} wei and this node has no open payment channel to it ({provider}); open one with `sphere channel open --target {target} --deposit 0.01eth`"
                ),
            )
            .with_details(serde_json::json!({
                "provider": provider.to_checksum(None),
                "price_wei": price.to_string(),
            })));
        };
        let needed = channel.next_amount(price);
        if needed > channel.deposit {
            return Err(Error::new(
                ErrorCode::PaymentRequired,
                format!(
                    "{what} on {target} costs {price} wei but channel {} has {} wei left; top it up with `sphere channel topup {} --amount 0.01eth`",
                    channel.channel_id,
                    channel.remaining(),
                    channel.channel_id
                ),
            )
            .with_details(serde_json::json!({
                "channel_id": channel.channel_id.to_string(),
                "price_wei": price.to_string(),
            })));
        }
        let mut new_voucher = false;
        let (amount, signature) = match &channel.last_voucher {
            Some((amount, signature)) if *amount >= needed => (*amount, signature.clone()),
            _ => {
                new_voucher = true;
                let amount = (needed + price * U256::from(ahead.saturating_sub(1)))
                    .min(channel.deposit)
                    .max(needed);
                let voucher = Voucher {
                    channelId: channel.channel_id,
                    cumulativeAmount: amount,
                };
                let signature =
                    sign_voucher(&self.inner.signer, &voucher, self.inner.chain.domain())
                        .to_vec()
                        .into();
                channel.last_voucher = Some((amount, alloy::primitives::Bytes::clone(&signature)));
                (amount, signature)
            }
        };
        channel.signed = channel.signed.max(amount);
        channel.in_flight += price;
        channel.version += 1;
        if amount > channel.signed_ceiling {
            channel.signed_ceiling = (amount + price * U256::from(CEILING_STEP_PRICES - 1))
                .min(channel.deposit)
                .max(amount);
            channel.ceiling_version = channel.version;
        }
        let payment = Payment {
            held: Some((self.clone(), channel.channel_id, price)),
            voucher: sphere_proto::v1::Voucher {
                channel_id: channel.channel_id.to_vec().into(),
                cumulative_amount_wei: amount.to_string(),
                signature: signature.0,
            },
        };
        Ok(Signed {
            payment,
            ceiling_version: channel.ceiling_version,
            new_voucher_version: new_voucher.then_some(channel.version),
        })
    }

    fn check_same_contract(&self, target: &Target, terms: &PaymentTerms) -> Result<(), Error> {
        let chain = &self.inner.chain;
        let same_contract = terms
            .contract
            .parse::<Address>()
            .is_ok_and(|contract| contract == chain.address());
        if terms.chain_id != chain.chain_id() || !same_contract {
            return Err(Error::new(
                ErrorCode::PaymentRequired,
                format!(
                    "target {target} is paid through contract {} on chain {}, but this node pays through {} on chain {}",
                    terms.contract,
                    terms.chain_id,
                    chain.address(),
                    chain.chain_id()
                ),
            ));
        }
        Ok(())
    }

    /// Adopts the amount a provider says it charged on a channel, from its refusal of a voucher
    /// as too small (see [`OutgoingChannel::catch_up_to`]); the largest voucher the provider
    /// kept, when the refusal carries it with this node's signature, proves what this node
    /// signed. Returns the channel's new version when the refusal is one this node can answer
    /// with a new voucher: the amount is within what it signed.
    pub fn catch_up(&self, refusal: &Error) -> Option<u64> {
        if refusal.code != ErrorCode::PaymentRequired {
            return None;
        }
        let details = refusal.details.as_ref()?;
        let field = |name: &str| details.get(name)?.as_str();
        let channel_id: B256 = field("channel_id")?.parse().ok()?;
        let charged: U256 = field("charged_wei")?.parse().ok()?;
        let kept_voucher = field("kept_voucher_wei")
            .and_then(|amount| amount.parse().ok())
            .zip(field("kept_voucher_signature").and_then(|hex| hex.parse().ok()));
        let proven_signed = self.proven_signed(channel_id, kept_voucher);
        let mut channels = self.lock();
        let channel = channels.get_mut(&channel_id)?;
        if !channel.may_have_signed(charged, proven_signed) {
            return None;
        }
        // The refused work is no longer in flight; what is may be reserved there, not charged.
        channel.catch_up_to(charged, charged, proven_signed);
        // Whether this refusal moved the count or a concurrent one did, the refused voucher's
        // credit ran out there: the next voucher is a new one, paying ahead of the count.
        channel.last_voucher = None;
        channel.version += 1;
        Some(channel.version)
    }

    /// Adopts what a provider's answer says it charged on a channel in all, `charged`: work
    /// still in flight may be charged already (its answer on the way), so the count becomes
    /// `charged` less what is in flight, never above the truth. Returns the channel's new
    /// version when it changed.
    fn catch_up_answered(&self, channel_id: B256, charged: U256) -> Option<u64> {
        let mut channels = self.lock();
        let channel = channels.get_mut(&channel_id)?;
        let spent = charged.saturating_sub(channel.in_flight);
        channel
            .catch_up_to(charged, spent, U256::ZERO)
            .then_some(channel.version)
    }

    /// Ends a payment's hold.
    fn release(&self, channel_id: B256, price: U256, succeeded: bool, answer_lost: bool) {
        let mut channels = self.lock();
        let channel = channels
            .get_mut(&channel_id)
            .expect("a paying channel stays known");
        channel.in_flight -= price;
        if succeeded {
            channel.spent += price;
        }
        channel.recount |= answer_lost;
        channel.version += 1;
    }

    /// Writes every channel's record that changed since it was last written (at shutdown, so
    /// that a clean restart starts from the right count).
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.channels.store_all(Durability::Lazy).await
    }

    async fn store(
        &self,
        channel_id: B256,
        version: u64,
        durability: Durability,
    ) -> Result<(), Error> {
        self.inner
            .channels
            .store(channel_id, version, durability)
            .await
    }

    async fn update(
        &self,
        channel_id: B256,
        change: impl FnOnce(&mut OutgoingChannel),
    ) -> Result<OutgoingChannel, Error> {
        let (record, version) = {
            let mut channels = self.lock();
            let channel = channels
                .get_mut(&channel_id)
                .ok_or_else(|| not_ours(channel_id))?;
            change(channel);
            channel.version += 1;
            (channel.clone(), channel.version)
        };
        self.store(channel_id, version, Durability::Synced).await?;
        Ok(record)
    }

    /// Finds the channels this node opened again from the chain, after it lost its records, and
    /// returns those it did not know. What was redeemed on each counts as spent and signed; the
    /// node cannot know what it signed beyond that, so it never catches up past it: a provider
    /// holding later vouchers refuses the next ones, and such a channel is best closed.
    pub async fn recover(&self) -> Result<Vec<OutgoingChannel>, Error> {
        let own_address = self.inner.signer.address();
        let mut recovered = Vec::new();
        for channel_id in self.inner.chain.channels_opened_by(own_address).await? {
            if self.lock().contains_key(&channel_id) {
                continue;
            }
            let Some(state) = self.inner.chain.channel(channel_id, true).await? else {
                continue;
            };
            let phase = if state.closed {
                ChannelPhase::Closed
            } else if state.close_requested_at != 0 {
                ChannelPhase::Closing
            } else {
                ChannelPhase::Open
            };
            let channel = OutgoingChannel {
                channel_id,
                provider: state.provider,
                deposit: state.deposit,
                signed: state.redeemed,
                signed_ceiling: state.redeemed,
                spent: state.redeemed,
                phase,
                opened_at_ms: crate::clock::now_ms(),
                refunded: state
                    .closed
                    .then(|| state.deposit.saturating_sub(state.redeemed)),
                version: 0,
                in_flight: U256::ZERO,
                recovered_ceiling: U256::ZERO,
                ceiling_version: 0,
                last_voucher: None,
                recount: false,
            };
            self.lock().insert(channel_id, channel.clone());
            self.store(channel_id, 0, Durability::Synced).await?;
            tracing::info!(channel = %channel_id, provider = %state.provider, "recovered a payment channel from the chain");
            recovered.push(channel);
        }
        Ok(recovered)
    }

    /// Opens a channel to `provider` with `deposit` wei.
    pub async fn open_channel(
        &self,
        provider: Address,
        deposit: U256,
    ) -> Result<(OutgoingChannel, Mined), Error> {
        let (channel_id, mined) = self.inner.chain.open(provider, deposit).await?;
        let channel = OutgoingChannel {
            channel_id,
            provider,
            deposit,
            signed: U256::ZERO,
            spent: U256::ZERO,
            phase: ChannelPhase::Open,
            opened_at_ms: crate::clock::now_ms(),
            refunded: None,
            signed_ceiling: U256::ZERO,
            version: 0,
            in_flight: U256::ZERO,
            recovered_ceiling: U256::ZERO,
            ceiling_version: 0,
            last_voucher: None,
            recount: false,
        };
        self.lock().insert(channel_id, channel.clone());
        self.store(channel_id, 0, Durability::Synced).await?;
        tracing::info!(channel = %channel_id, %provider, %deposit, tx = %mined.tx, "opened a payment channel");
        Ok((channel, mined))
    }

    /// Adds `amount` wei to a channel's deposit.
    pub async fn top_up(
        &self,
        channel_id: B256,
        amount: U256,
    ) -> Result<(OutgoingChannel, Mined), Error> {
        self.channel(channel_id)?;
        let mined = self.inner.chain.top_up(channel_id, amount).await?;
        let channel = self
            .update(channel_id, |channel| channel.deposit += amount)
            .await?;
        Ok((channel, mined))
    }

    /// Closes a channel: the first call asks to close, and the requester stops paying through
    /// it; a call after the challenge period closes it and takes back what was not redeemed.
    pub async fn close(&self, channel_id: B256) -> Result<(OutgoingChannel, Mined), Error> {
        let channel = self.channel(channel_id)?;
        match channel.phase {
            ChannelPhase::Open => {
                let mined = self.inner.chain.request_close(channel_id).await?;
                let channel = self
                    .update(channel_id, |channel| channel.phase = ChannelPhase::Closing)
                    .await?;
                tracing::info!(channel = %channel_id, tx = %mined.tx, "asked to close a payment channel");
                Ok((channel, mined))
            }
            ChannelPhase::Closing => {
                let mined = self.inner.chain.close(channel_id).await?;
                let state = self.inner.chain.channel(channel_id, true).await?;
                let refunded = state.map_or(U256::ZERO, |state| state.deposit - state.redeemed);
                let channel = self
                    .update(channel_id, |channel| {
                        channel.phase = ChannelPhase::Closed;
                        channel.refunded = Some(refunded);
                    })
                    .await?;
                tracing::info!(channel = %channel_id, %refunded, tx = %mined.tx, "closed a payment channel");
                Ok((channel, mined))
            }
            ChannelPhase::Closed => Err(Error::new(
                ErrorCode::ChannelStateConflict,
                format!("channel {channel_id} is closed already"),
            )),
        }
    }
}

fn not_ours(id: B256) -> Error {
    Error::new(
        ErrorCode::ChannelNotFound,
        format!("this node pays through no channel {id}"),
    )
}

impl From<&OutgoingChannel> for crate::api::ChannelInfo {
    fn from(channel: &OutgoingChannel) -> Self {
        Self {
            channel_id: channel.channel_id.to_string(),
            provider: channel.provider.to_checksum(None),
            phase: channel.phase,
            deposit_wei: channel.deposit.to_string(),
            spent_wei: channel.spent.to_string(),
            signed_wei: channel.signed.to_string(),
            remaining_wei: channel.remaining().to_string(),
            opened_at_ms: channel.opened_at_ms,
            refunded_wei: channel.refunded.map(|refunded| refunded.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy::providers::{Provider, ProviderBuilder};
    use sphere_contracts::SpherePayments;

    use super::*;
    use crate::identity::NodeIdentity;

    const CHANNEL: B256 = B256::repeat_byte(7);

    /// A payer with one open channel, on a chain it never needs to reach.
    async fn payer_with_a_channel(dir: &std::path::Path, identity: &NodeIdentity) -> Payer {
        let nowhere = ProviderBuilder::new()
            .connect_http("http://127.0.0.1:9".parse().expect("URL"))
            .erased();
        let chain = Chain::new(
            SpherePayments::new(Address::repeat_byte(9), nowhere),
            31_337,
            60,
            Duration::from_secs(5),
        );
        let peers = Peers::new(crate::link::LinkKeys::new(identity), Duration::from_secs(1));
        let db = Db::open(dir).expect("database");
        let payer = Payer::open(chain, db, peers, identity.signer().clone(), 32)
            .await
            .expect("payer");
        payer.lock().insert(
            CHANNEL,
            OutgoingChannel {
                channel_id: CHANNEL,
                provider: Address::repeat_byte(3),
                deposit: U256::from(100_000),
                signed: U256::from(1_000),
                signed_ceiling: U256::from(1_000),
                spent: U256::from(1_000),
                phase: ChannelPhase::Open,
                opened_at_ms: 0,
                refunded: None,
                version: 0,
                in_flight: U256::ZERO,
                recovered_ceiling: U256::ZERO,
                ceiling_version: 0,
                last_voucher: None,
                recount: false,
            },
        );
        payer
    }

    /// A provider's refusal saying it charged 5,000 and kept a voucher for 5,000 signed by
    /// `signer`.
    fn refusal(payer: &Payer, signer: &PrivateKeySigner) -> Error {
        let voucher = Voucher {
            channelId: CHANNEL,
            cumulativeAmount: U256::from(5_000),
        };
        let signature = sign_voucher(signer, &voucher, payer.inner.chain.domain());
        Error::new(ErrorCode::PaymentRequired, "underpaid").with_details(serde_json::json!({
            "channel_id": CHANNEL.to_string(),
            "charged_wei": "5000",
            "kept_voucher_wei": "5000",
            "kept_voucher_signature": alloy::primitives::Bytes::from(signature.to_vec()).to_string(),
        }))
    }

    #[tokio::test]
    async fn a_kept_voucher_proves_what_was_signed_only_with_this_nodes_own_signature() {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = NodeIdentity::generate();
        let payer = payer_with_a_channel(dir.path(), &identity).await;
        let spent = || payer.channel(CHANNEL).expect("channel").spent;

        // A voucher the provider forged (signed by another key) proves nothing, and 5,000 is
        // beyond the 1,000 this node knows it signed.
        let stranger = NodeIdentity::generate();
        let forged = refusal(&payer, stranger.signer());
        assert_eq!(payer.catch_up(&forged), None);
        assert_eq!(spent(), U256::from(1_000));

        // The same amount under this node's own signature is proof: it catches up.
        let proven = refusal(&payer, identity.signer());
        assert!(payer.catch_up(&proven).is_some());
        assert_eq!(spent(), U256::from(5_000));
    }

    #[tokio::test]
    async fn a_lost_answer_has_the_providers_count_asked_for_before_the_next_payment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = NodeIdentity::generate();
        let payer = payer_with_a_channel(dir.path(), &identity).await;
        let provider = Address::repeat_byte(3);
        let price = U256::from(1_000);
        let payment = || {
            payer.lock().get_mut(&CHANNEL).expect("channel").in_flight += price;
            Payment {
                held: Some((payer.clone(), CHANNEL, price)),
                voucher: sphere_proto::v1::Voucher::default(),
            }
        };
        let failure = |code| Err::<(), _>(Error::new(code, "failed"));

        // The provider answered that the work failed: nothing was charged unseen.
        payment().settle(&failure(ErrorCode::PluginFailed)).await;
        assert!(!payer.take_recount(provider));

        // The call timed out or broke, or the work was dropped unanswered: it may have run.
        payment().settle(&failure(ErrorCode::TargetTimeout)).await;
        assert!(payer.take_recount(provider));
        assert!(!payer.take_recount(provider), "asked for once");
        payment()
            .settle(&failure(ErrorCode::TargetUnreachable))
            .await;
        assert!(payer.take_recount(provider));
        drop(payment());
        assert!(payer.take_recount(provider));
        assert_eq!(
            payer.channel(CHANNEL).expect("channel").in_flight,
            U256::ZERO
        );
    }
}
