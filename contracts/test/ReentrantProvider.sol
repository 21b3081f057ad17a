// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {SpherePayments} from "../src/SpherePayments.sol";

/// @notice A provider that tries to redeem again while it is being paid. For tests only: the
/// payments contract must refuse the second, nested redemption.
contract ReentrantProvider {
    SpherePayments public immutable payments;
    bytes32 public channelId;
    uint256 public nestedAmount;
    bytes public nestedSignature;
    bool public reentryAttempted;
    bool public reentryRefused;

    constructor(SpherePayments target) {
        payments = target;
    }

    /// @notice Redeems `amount` and, when paid, tries to redeem `nextAmount` from inside the payment.
    function attack(bytes32 channel, uint256 amount, bytes calldata signature, uint256 nextAmount, bytes calldata nextSignature)
        external
    {
        channelId = channel;
        nestedAmount = nextAmount;
        nestedSignature = nextSignature;
        payments.redeem(channel, amount, signature, amount);
    }

    receive() external payable {
        if (reentryAttempted) return;
        reentryAttempted = true;
        try payments.redeem(channelId, nestedAmount, nestedSignature, nestedAmount) {}
        catch {
            reentryRefused = true;
        }
    }
}
