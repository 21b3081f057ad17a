//! CPU time of a voucher: signing one (requester) and recovering its signer (provider), the
//! cryptographic part of paying for and checking one piece of work.
//! Run: `cargo bench -p sphere-contracts --bench vouchers`.

use std::hint::black_box;
use std::time::Instant;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use sphere_contracts::{Voucher, sign_voucher, voucher_domain, voucher_signer};

const ROUNDS: u32 = 5_000;

fn main() {
    let requester = PrivateKeySigner::random();
    let domain = voucher_domain(31_337, Address::repeat_byte(1));
    let vouchers: Vec<Voucher> = (0..ROUNDS)
        .map(|round| Voucher {
            channelId: B256::repeat_byte(2),
            cumulativeAmount: U256::from(round + 1) * U256::from(1_000_000_000_000u64),
        })
        .collect();

    let started = Instant::now();
    let signatures: Vec<[u8; 65]> = vouchers
        .iter()
        .map(|voucher| sign_voucher(&requester, black_box(voucher), &domain))
        .collect();
    let sign = started.elapsed() / ROUNDS;

    let started = Instant::now();
    for (voucher, signature) in vouchers.iter().zip(&signatures) {
        let signer = voucher_signer(black_box(voucher), &domain, signature);
        assert_eq!(signer, Some(requester.address()));
    }
    let check = started.elapsed() / ROUNDS;

    println!(
        "voucher sign (requester):       {:>6.1} us",
        sign.as_secs_f64() * 1e6
    );
    println!(
        "voucher signer check (provider): {:>6.1} us",
        check.as_secs_f64() * 1e6
    );
}
