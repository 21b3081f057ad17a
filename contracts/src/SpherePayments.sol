// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title Sphere payments: an escrow of unidirectional payment channels.
/// @notice A requester opens a channel to a provider with a deposit in ETH and pays for work with
/// off-chain vouchers: EIP-712 signatures over a growing cumulative amount. The provider redeems
/// what it earned, up to the latest voucher, whenever it likes (one transaction for any number of tasks) and the channel
/// stays open. To get the rest of its deposit back, the requester asks to close; during the
/// challenge period that follows, the provider may still redeem; after it, the requester closes
/// the channel and takes the remainder.
/// @dev Safe against: replayed or repeated vouchers (amounts are cumulative and only grow), a
/// voucher for another channel (the channel ID is signed) or another chain or contract (the
/// EIP-712 domain), a voucher signed by anyone but the requester, redeeming more than the voucher or the deposit,
/// closing before the challenge period ends, and reentrancy (state changes before transfers, and a
/// guard).
contract SpherePayments is EIP712, ReentrancyGuard {
    /// @notice One payment channel.
    struct Channel {
        /// Who deposits and signs vouchers.
        address requester;
        /// Who redeems vouchers.
        address provider;
        /// Wei deposited in all.
        uint256 deposit;
        /// Wei paid to the provider so far (the largest cumulative amount redeemed).
        uint256 redeemed;
        /// When the requester asked to close (0: not asked).
        uint64 closeRequestedAt;
        /// Whether the channel is closed and its remainder refunded.
        bool closed;
    }

    /// @notice EIP-712 type of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint256 cumulativeAmount)");

    /// @notice Seconds between a close request and the moment the requester can close.
    uint64 public immutable challengePeriod;

    /// @notice Every channel by ID.
    mapping(bytes32 => Channel) public channels;

    /// @notice Channels opened per requester, so channel IDs never repeat.
    mapping(address => uint256) public channelsOpened;

    event ChannelOpened(bytes32 indexed channelId, address indexed requester, address indexed provider, uint256 deposit);
    event ChannelToppedUp(bytes32 indexed channelId, uint256 amount, uint256 deposit);
    event VoucherRedeemed(bytes32 indexed channelId, uint256 cumulativeAmount, uint256 paid);
    event CloseRequested(bytes32 indexed channelId, uint256 closableAt);
    event ChannelClosed(bytes32 indexed channelId, uint256 refunded);

    error NoSuchChannel();
    error NotRequester();
    error NotProvider();
    error ChannelClosedAlready();
    error CloseAlreadyRequested();
    error CloseNotRequested();
    error ChallengePeriodRunning(uint256 closableAt);
    error EmptyDeposit();
    error ZeroProvider();
    error BadSignature();
    error AmountNotAboveRedeemed(uint256 redeemed);
    error AmountAboveVoucher(uint256 cumulativeAmount);
    error AmountAboveDeposit(uint256 deposit);
    error TransferFailed();

    /// @param challengePeriodSeconds seconds a provider has to redeem after a close request.
    constructor(uint64 challengePeriodSeconds) EIP712("SpherePayments", "1") {
        challengePeriod = challengePeriodSeconds;
    }

    /// @notice Opens a channel to `provider` with the ETH sent as deposit.
    function open(address provider) external payable returns (bytes32 channelId) {
        if (provider == address(0)) revert ZeroProvider();
        if (msg.value == 0) revert EmptyDeposit();
        channelId = keccak256(abi.encode(block.chainid, address(this), msg.sender, provider, channelsOpened[msg.sender]++));
        channels[channelId] = Channel({
            requester: msg.sender,
            provider: provider,
            deposit: msg.value,
            redeemed: 0,
            closeRequestedAt: 0,
            closed: false
        });
        emit ChannelOpened(channelId, msg.sender, provider, msg.value);
    }

    /// @notice Adds the ETH sent to a channel's deposit. Only before a close request.
    function topUp(bytes32 channelId) external payable {
        Channel storage channel = _existing(channelId);
        if (msg.sender != channel.requester) revert NotRequester();
        if (channel.closed) revert ChannelClosedAlready();
        if (channel.closeRequestedAt != 0) revert CloseAlreadyRequested();
        if (msg.value == 0) revert EmptyDeposit();
        channel.deposit += msg.value;
        emit ChannelToppedUp(channelId, msg.value, channel.deposit);
    }

    /// @notice Pays the provider up to `amount` in all, under a voucher the requester signed for
    /// `cumulativeAmount`. A voucher authorises payments up to its amount: a requester may sign
    /// ahead of the work (a prepaid window), and the provider claims what the work earned, then
    /// more later with the same voucher or a larger one.
    function redeem(bytes32 channelId, uint256 cumulativeAmount, bytes calldata signature, uint256 amount)
        external
        nonReentrant
    {
        Channel storage channel = _existing(channelId);
        if (msg.sender != channel.provider) revert NotProvider();
        if (channel.closed) revert ChannelClosedAlready();
        if (amount <= channel.redeemed) revert AmountNotAboveRedeemed(channel.redeemed);
        if (amount > cumulativeAmount) revert AmountAboveVoucher(cumulativeAmount);
        if (amount > channel.deposit) revert AmountAboveDeposit(channel.deposit);
        if (voucherSigner(channelId, cumulativeAmount, signature) != channel.requester) revert BadSignature();

        uint256 paid = amount - channel.redeemed;
        channel.redeemed = amount;
        emit VoucherRedeemed(channelId, amount, paid);
        _send(channel.provider, paid);
    }

    /// @notice Starts the challenge period after which the requester can close.
    function requestClose(bytes32 channelId) external {
        Channel storage channel = _existing(channelId);
        if (msg.sender != channel.requester) revert NotRequester();
        if (channel.closed) revert ChannelClosedAlready();
        if (channel.closeRequestedAt != 0) revert CloseAlreadyRequested();
        channel.closeRequestedAt = uint64(block.timestamp);
        emit CloseRequested(channelId, block.timestamp + challengePeriod);
    }

    /// @notice Closes the channel after the challenge period and refunds what was not redeemed.
    function close(bytes32 channelId) external nonReentrant {
        Channel storage channel = _existing(channelId);
        if (msg.sender != channel.requester) revert NotRequester();
        if (channel.closed) revert ChannelClosedAlready();
        if (channel.closeRequestedAt == 0) revert CloseNotRequested();
        uint256 closableAt = uint256(channel.closeRequestedAt) + challengePeriod;
        if (block.timestamp < closableAt) revert ChallengePeriodRunning(closableAt);

        uint256 refund = channel.deposit - channel.redeemed;
        channel.closed = true;
        emit ChannelClosed(channelId, refund);
        _send(channel.requester, refund);
    }

    /// @notice Returns who signed a voucher (address zero for a malformed signature).
    function voucherSigner(bytes32 channelId, uint256 cumulativeAmount, bytes calldata signature)
        public
        view
        returns (address)
    {
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
        (address signer, ECDSA.RecoverError recoverError,) = ECDSA.tryRecover(digest, signature);
        return recoverError == ECDSA.RecoverError.NoError ? signer : address(0);
    }

    /// @notice Returns the EIP-712 domain separator vouchers are signed under.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _existing(bytes32 channelId) private view returns (Channel storage channel) {
        channel = channels[channelId];
        if (channel.requester == address(0)) revert NoSuchChannel();
    }

    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        (bool sent,) = payable(to).call{value: amount}("");
        if (!sent) revert TransferFailed();
    }
}
