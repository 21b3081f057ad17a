//! The payment contract on a real chain: a local anvil (from the npm package
//! `@foundry-rs/anvil-linux-amd64`, installed by `scripts/test-all`), driven through the alloy
//! bindings, one test per safety property.

use std::path::PathBuf;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use sphere_contracts::SpherePayments::{self, SpherePaymentsErrors, SpherePaymentsInstance};
use sphere_contracts::{Voucher, sign_voucher, voucher_domain, voucher_signer};

alloy::sol!(
    #[allow(missing_docs)]
    #[sol(rpc)]
    ReentrantProvider,
    "artifacts/ReentrantProvider.json"
);

const CHALLENGE_PERIOD: u64 = 3600;

fn anvil_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        path.exists(),
        "anvil is missing: run scripts/test-all, or npm install --prefix .tools @foundry-rs/anvil-linux-amd64@1.7.1"
    );
    path
}

/// A chain with the contract deployed, and a requester and a provider with funds.
struct Chain {
    anvil: AnvilInstance,
    requester: PrivateKeySigner,
    provider: PrivateKeySigner,
    contract: Address,
}

impl Chain {
    async fn start() -> Self {
        let anvil = Anvil::at(anvil_path()).try_spawn().expect("anvil starts");
        let requester: PrivateKeySigner = anvil.keys()[0].clone().into();
        let provider: PrivateKeySigner = anvil.keys()[1].clone().into();
        let deployer = Self::connect(&anvil, &requester);
        let contract = SpherePayments::deploy(deployer, CHALLENGE_PERIOD)
            .await
            .expect("deploys");
        Self {
            contract: *contract.address(),
            anvil,
            requester,
            provider,
        }
    }

    fn connect(anvil: &AnvilInstance, signer: &PrivateKeySigner) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(anvil.endpoint_url())
            .erased()
    }

    /// Returns the contract as `signer` sees it.
    fn as_signer(&self, signer: &PrivateKeySigner) -> SpherePaymentsInstance<DynProvider> {
        SpherePayments::new(self.contract, Self::connect(&self.anvil, signer))
    }

    fn requester_side(&self) -> SpherePaymentsInstance<DynProvider> {
        self.as_signer(&self.requester)
    }

    fn provider_side(&self) -> SpherePaymentsInstance<DynProvider> {
        self.as_signer(&self.provider)
    }

    /// Opens a channel from the requester to `provider` with `deposit` wei.
    async fn open(&self, provider: Address, deposit: u64) -> B256 {
        let receipt = self
            .requester_side()
            .open(provider)
            .value(U256::from(deposit))
            .send()
            .await
            .expect("sent")
            .get_receipt()
            .await
            .expect("mined");
        let opened = receipt
            .decoded_log::<SpherePayments::ChannelOpened>()
            .expect("a ChannelOpened event");
        assert_eq!(opened.requester, self.requester.address());
        assert_eq!(opened.deposit, U256::from(deposit));
        opened.channelId
    }

    /// Signs a voucher for `amount` wei in all on `channel` with `signer`, under `domain_chain`
    /// and `domain_contract` (the real ones unless a test forges them).
    fn voucher_by(
        &self,
        signer: &PrivateKeySigner,
        channel: B256,
        amount: u64,
        chain: u64,
        contract: Address,
    ) -> Bytes {
        let voucher = Voucher {
            channelId: channel,
            cumulativeAmount: U256::from(amount),
        };
        Bytes::from(sign_voucher(signer, &voucher, &voucher_domain(chain, contract)).to_vec())
    }

    fn voucher(&self, channel: B256, amount: u64) -> Bytes {
        self.voucher_by(
            &self.requester,
            channel,
            amount,
            self.anvil.chain_id(),
            self.contract,
        )
    }

    async fn balance(&self, account: Address) -> U256 {
        Self::connect(&self.anvil, &self.requester)
            .get_balance(account)
            .await
            .expect("balance")
    }
}

/// Asserts that a contract call reverts with `expected` (checked by simulating it).
async fn assert_reverts<T>(
    result: Result<T, alloy::contract::Error>,
    expected: fn(&SpherePaymentsErrors) -> bool,
    what: &str,
) {
    let Err(error) = result else {
        panic!("{what}: the call went through");
    };
    let decoded = error
        .as_decoded_interface_error::<SpherePaymentsErrors>()
        .unwrap_or_else(|| panic!("{what}: not a contract error: {error}"));
    assert!(expected(&decoded), "{what}: reverted with {decoded:?}");
}

#[tokio::test]
async fn a_voucher_pays_the_provider_exactly_once_and_the_channel_stays_open() {
    let chain = Chain::start().await;
    let channel = chain.open(chain.provider.address(), 1_000_000).await;
    let provider_side = chain.provider_side();
    let before = chain.balance(chain.provider.address()).await;

    let receipt = provider_side
        .redeem(
            channel,
            U256::from(250_000),
            chain.voucher(channel, 250_000),
            U256::from(250_000),
        )
        .send()
        .await
        .expect("sent")
        .get_receipt()
        .await
        .expect("mined");
    assert!(receipt.status());
    let gas = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert_eq!(
        chain.balance(chain.provider.address()).await,
        before + U256::from(250_000) - gas
    );

    // The same voucher again, or an older one: nothing more to pay.
    assert_reverts(
        provider_side
            .redeem(
                channel,
                U256::from(250_000),
                chain.voucher(channel, 250_000),
                U256::from(250_000),
            )
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::AmountNotAboveRedeemed(_)),
        "a replayed voucher",
    )
    .await;
    assert_reverts(
        provider_side
            .redeem(
                channel,
                U256::from(100_000),
                chain.voucher(channel, 100_000),
                U256::from(100_000),
            )
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::AmountNotAboveRedeemed(_)),
        "an older voucher",
    )
    .await;

    // A later voucher pays only the difference; the channel is still open.
    provider_side
        .redeem(
            channel,
            U256::from(600_000),
            chain.voucher(channel, 600_000),
            U256::from(600_000),
        )
        .send()
        .await
        .expect("sent")
        .get_receipt()
        .await
        .expect("mined");
    let state = provider_side
        .channels(channel)
        .call()
        .await
        .expect("channel");
    assert_eq!(state.redeemed, U256::from(600_000));
    assert!(!state.closed);
    assert_eq!(chain.balance(chain.contract).await, U256::from(400_000));
}

#[tokio::test]
async fn a_provider_claims_part_of_a_voucher_and_the_rest_later_never_beyond_it() {
    let chain = Chain::start().await;
    let channel = chain.open(chain.provider.address(), 1_000_000).await;
    let provider_side = chain.provider_side();
    // The requester signed ahead of the work: 500,000 in all.
    let ahead = chain.voucher(channel, 500_000);
    let claim = async |amount: u64| {
        provider_side
            .redeem(
                channel,
                U256::from(500_000),
                ahead.clone(),
                U256::from(amount),
            )
            .send()
            .await
            .expect("sent")
            .get_receipt()
            .await
            .expect("mined")
    };
    assert!(claim(120_000).await.status());
    let redeemed = async || {
        provider_side
            .channels(channel)
            .call()
            .await
            .expect("channel")
            .redeemed
    };
    assert_eq!(redeemed().await, U256::from(120_000));
    // The same voucher pays the next part, only the difference.
    assert!(claim(500_000).await.status());
    assert_eq!(redeemed().await, U256::from(500_000));
    assert_eq!(chain.balance(chain.contract).await, U256::from(500_000));

    assert_reverts(
        provider_side
            .redeem(
                channel,
                U256::from(600_000),
                chain.voucher(channel, 600_000),
                U256::from(600_001),
            )
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::AmountAboveVoucher(_)),
        "a claim above its voucher",
    )
    .await;
    assert_reverts(
        provider_side
            .redeem(
                channel,
                U256::from(600_000),
                chain.voucher(channel, 500_000),
                U256::from(550_000),
            )
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::BadSignature(_)),
        "a voucher whose amount was raised",
    )
    .await;
}

#[tokio::test]
async fn rust_and_the_contract_agree_on_who_signed_a_voucher() {
    let chain = Chain::start().await;
    let channel = chain.open(chain.provider.address(), 1_000).await;
    let voucher = Voucher {
        channelId: channel,
        cumulativeAmount: U256::from(700),
    };
    let domain = voucher_domain(chain.anvil.chain_id(), chain.contract);
    let signature = sign_voucher(&chain.requester, &voucher, &domain);
    let on_chain = chain
        .provider_side()
        .voucherSigner(channel, U256::from(700), Bytes::from(signature.to_vec()))
        .call()
        .await
        .expect("view call");
    assert_eq!(on_chain, chain.requester.address());
    assert_eq!(
        voucher_signer(&voucher, &domain, &signature),
        Some(on_chain)
    );
    let on_chain_domain = chain
        .provider_side()
        .domainSeparator()
        .call()
        .await
        .expect("view call");
    assert_eq!(on_chain_domain, domain.separator());

    // Variants the contract refuses (v as 0/1; the high-s twin), which the node must refuse too,
    // or it would do work for a voucher it cannot redeem.
    let mut raw_v = signature;
    raw_v[64] -= 27;
    let parsed = alloy::primitives::Signature::try_from(&signature[..]).expect("valid");
    let order = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .expect("the curve order");
    let twin = alloy::primitives::Signature::new(parsed.r(), order - parsed.s(), !parsed.v());
    for variant in [raw_v.to_vec(), twin.as_bytes().to_vec()] {
        let on_chain = chain
            .provider_side()
            .voucherSigner(channel, U256::from(700), Bytes::from(variant.clone()))
            .call()
            .await
            .expect("view call");
        assert_eq!(on_chain, Address::ZERO);
        assert_eq!(voucher_signer(&voucher, &domain, &variant), None);
    }
}

#[tokio::test]
async fn forged_foreign_and_excessive_vouchers_are_refused() {
    let chain = Chain::start().await;
    let channel = chain.open(chain.provider.address(), 1_000).await;
    let other_channel = chain.open(chain.provider.address(), 1_000).await;
    let chain_id = chain.anvil.chain_id();
    let requester = &chain.requester;
    let bad_signature: fn(&SpherePaymentsErrors) -> bool =
        |e| matches!(e, SpherePaymentsErrors::BadSignature(_));
    let above_deposit: fn(&SpherePaymentsErrors) -> bool =
        |e| matches!(e, SpherePaymentsErrors::AmountAboveDeposit(_));
    // (what, channel redeemed on, amount claimed, signature, expected refusal)
    let cases = [
        (
            "a voucher signed by someone else",
            channel,
            500,
            chain.voucher_by(
                &PrivateKeySigner::random(),
                channel,
                500,
                chain_id,
                chain.contract,
            ),
            bad_signature,
        ),
        (
            "a voucher for another channel",
            other_channel,
            500,
            chain.voucher(channel, 500),
            bad_signature,
        ),
        (
            "a voucher for another chain",
            channel,
            500,
            chain.voucher_by(requester, channel, 500, chain_id + 1, chain.contract),
            bad_signature,
        ),
        (
            "a voucher for another contract",
            channel,
            500,
            chain.voucher_by(requester, channel, 500, chain_id, Address::repeat_byte(7)),
            bad_signature,
        ),
        (
            "a voucher for a different amount",
            channel,
            600,
            chain.voucher(channel, 500),
            bad_signature,
        ),
        (
            "more than the deposit",
            channel,
            1_001,
            chain.voucher(channel, 1_001),
            above_deposit,
        ),
        (
            "a malformed signature",
            channel,
            500,
            Bytes::from(vec![1u8; 65]),
            bad_signature,
        ),
    ];
    let provider_side = chain.provider_side();
    for (what, on_channel, amount, signature, expected) in cases {
        let attempt = provider_side
            .redeem(
                on_channel,
                U256::from(amount),
                signature,
                U256::from(amount),
            )
            .call()
            .await;
        assert_reverts(attempt, expected, what).await;
    }
    let by_requester = chain
        .requester_side()
        .redeem(
            channel,
            U256::from(500),
            chain.voucher(channel, 500),
            U256::from(500),
        )
        .call()
        .await;
    assert_reverts(
        by_requester,
        |e| matches!(e, SpherePaymentsErrors::NotProvider(_)),
        "a redemption by someone but the provider",
    )
    .await;
}

#[tokio::test]
async fn the_requester_closes_only_after_the_challenge_period_and_gets_the_rest() {
    let chain = Chain::start().await;
    let channel = chain.open(chain.provider.address(), 10_000).await;
    let requester_side = chain.requester_side();
    let provider_side = chain.provider_side();
    requester_side
        .topUp(channel)
        .value(U256::from(5_000))
        .send()
        .await
        .expect("sent")
        .watch()
        .await
        .expect("mined");

    assert_reverts(
        requester_side.close(channel).call().await,
        |e| matches!(e, SpherePaymentsErrors::CloseNotRequested(_)),
        "closing without a request",
    )
    .await;
    requester_side
        .requestClose(channel)
        .send()
        .await
        .expect("sent")
        .watch()
        .await
        .expect("mined");
    assert_reverts(
        requester_side.close(channel).call().await,
        |e| matches!(e, SpherePaymentsErrors::ChallengePeriodRunning(_)),
        "closing during the challenge period",
    )
    .await;
    assert_reverts(
        requester_side
            .topUp(channel)
            .value(U256::from(1))
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::CloseAlreadyRequested(_)),
        "a top-up after the close request",
    )
    .await;

    // The provider may still redeem during the challenge period.
    provider_side
        .redeem(
            channel,
            U256::from(4_000),
            chain.voucher(channel, 4_000),
            U256::from(4_000),
        )
        .send()
        .await
        .expect("sent")
        .watch()
        .await
        .expect("mined");

    let node = Chain::connect(&chain.anvil, &chain.requester);
    node.anvil_increase_time(CHALLENGE_PERIOD)
        .await
        .expect("time travel");
    node.evm_mine(None).await.expect("mine");
    let before = chain.balance(chain.requester.address()).await;
    let receipt = requester_side
        .close(channel)
        .send()
        .await
        .expect("sent")
        .get_receipt()
        .await
        .expect("mined");
    let closed = receipt
        .decoded_log::<SpherePayments::ChannelClosed>()
        .expect("a ChannelClosed event");
    assert_eq!(
        closed.refunded,
        U256::from(11_000),
        "deposit 15,000 less 4,000 redeemed"
    );
    let gas = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert_eq!(
        chain.balance(chain.requester.address()).await,
        before + U256::from(11_000) - gas
    );
    assert_eq!(chain.balance(chain.contract).await, U256::ZERO);

    assert_reverts(
        provider_side
            .redeem(
                channel,
                U256::from(5_000),
                chain.voucher(channel, 5_000),
                U256::from(5_000),
            )
            .call()
            .await,
        |e| matches!(e, SpherePaymentsErrors::ChannelClosedAlready(_)),
        "a redemption after closing",
    )
    .await;
    assert_reverts(
        requester_side.close(channel).call().await,
        |e| matches!(e, SpherePaymentsErrors::ChannelClosedAlready(_)),
        "closing twice",
    )
    .await;
}

#[tokio::test]
async fn a_provider_cannot_redeem_again_from_inside_its_payment() {
    let chain = Chain::start().await;
    let attacker = ReentrantProvider::deploy(
        Chain::connect(&chain.anvil, &chain.provider),
        chain.contract,
    )
    .await
    .expect("deploys");
    let channel = chain.open(*attacker.address(), 10_000).await;
    attacker
        .attack(
            channel,
            U256::from(1_000),
            chain.voucher(channel, 1_000),
            U256::from(9_000),
            chain.voucher(channel, 9_000),
        )
        .send()
        .await
        .expect("sent")
        .get_receipt()
        .await
        .expect("mined");
    assert!(attacker.reentryAttempted().call().await.expect("read"));
    assert!(
        attacker.reentryRefused().call().await.expect("read"),
        "the nested redemption went through"
    );
    assert_eq!(chain.balance(*attacker.address()).await, U256::from(1_000));
    let state = chain
        .requester_side()
        .channels(channel)
        .call()
        .await
        .expect("channel");
    assert_eq!(state.redeemed, U256::from(1_000));
}

#[test]
fn the_committed_artifacts_match_the_source() {
    let contracts = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(
        contracts.join("node_modules/solc").exists(),
        "the pinned solc is missing: run scripts/test-all, or (cd contracts && npm ci)"
    );
    let output = std::process::Command::new("node")
        .arg("build.js")
        .arg("--check")
        .current_dir(&contracts)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
