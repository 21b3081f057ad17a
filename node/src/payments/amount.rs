//! Amounts of ETH as people write them and as the node computes prices.

use alloy::primitives::U256;
use alloy::primitives::utils::parse_units;

/// Bytes in a GiB, the unit of storage and read prices.
const GIB: u64 = 1 << 30;
/// Seconds in a day, the unit of storage prices.
const DAY_SECONDS: u64 = 86_400;

/// Parses an amount: whole wei (`"1000"`), or a decimal with a unit (`"0.01eth"`, `"0.01 ether"`,
/// `"5gwei"`, `"7 wei"`).
pub fn parse_amount(text: &str) -> Result<U256, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| character.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = (
        text[..split].trim(),
        text[split..].trim().to_ascii_lowercase(),
    );
    let (unit, decimals) = match unit.as_str() {
        "" | "wei" => ("wei", 0),
        "gwei" => ("gwei", 9),
        "eth" | "ether" => ("ether", 18),
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use wei, gwei or eth"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not an amount, for example \"0.01eth\""
        ));
    }
    if !number
        .chars()
        .all(|character| character.is_ascii_digit() || character == '.')
    {
        return Err(format!(
            "{text:?} is not an amount, for example \"0.01eth\""
        ));
    }
    // parse_units drops digits past the unit's precision; a fraction of a wei is a mistake.
    if number
        .split_once('.')
        .is_some_and(|(_, fraction)| fraction.len() > decimals)
    {
        return Err(format!("{text:?} has more decimals than {unit} allows"));
    }
    parse_units(number, unit)
        .map(Into::into)
        .map_err(|error| format!("{text:?} is not an amount of {unit}: {error}"))
}

/// Returns the price of `bytes` at `wei_per_gib`, rounded up to a whole wei. Rates come from
/// other nodes too, so products saturate instead of overflowing.
pub fn price_per_gib(bytes: u64, wei_per_gib: U256) -> U256 {
    U256::from(bytes)
        .saturating_mul(wei_per_gib)
        .div_ceil(U256::from(GIB))
}

/// Returns the price of keeping `bytes` for `seconds` at `wei_per_gib_day`, rounded up.
pub fn storage_price(bytes: u64, seconds: u64, wei_per_gib_day: U256) -> U256 {
    U256::from(bytes)
        .saturating_mul(wei_per_gib_day)
        .saturating_mul(U256::from(seconds))
        .div_ceil(U256::from(GIB) * U256::from(DAY_SECONDS))
}

/// Returns the bytes a read of an object of `size` bytes in `chunk_count` chunks costs from chunk
/// `start` on. Chunks have one size but the last, so the share of chunks is the share of bytes
/// (rounded up); both sides compute it the same way.
pub fn read_bytes(size: u64, chunk_count: u64, start: u64) -> u64 {
    let chunk_count = chunk_count.max(1);
    let remaining = chunk_count.saturating_sub(start);
    u64::try_from((u128::from(size) * u128::from(remaining)).div_ceil(u128::from(chunk_count)))
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_in_wei_gwei_and_eth() {
        assert_eq!(parse_amount("1000"), Ok(U256::from(1000)));
        assert_eq!(parse_amount("7 wei"), Ok(U256::from(7)));
        assert_eq!(parse_amount("5gwei"), Ok(U256::from(5_000_000_000u64)));
        assert_eq!(
            parse_amount("0.01eth"),
            Ok(U256::from(10_000_000_000_000_000u64))
        );
        assert_eq!(
            parse_amount("1 ETHER"),
            Ok(U256::from(1_000_000_000_000_000_000u64))
        );
        for bad in [
            "",
            "eth",
            "1.5",
            "-1",
            "1 dollar",
            "0x10",
            "0.0000000001gwei",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prices_round_up_to_a_whole_wei() {
        assert_eq!(price_per_gib(GIB, U256::from(1000)), U256::from(1000));
        assert_eq!(price_per_gib(1, U256::from(1000)), U256::from(1));
        assert_eq!(price_per_gib(0, U256::from(1000)), U256::ZERO);
        assert_eq!(
            storage_price(GIB, DAY_SECONDS, U256::from(10)),
            U256::from(10)
        );
        assert_eq!(
            storage_price(GIB / 2, DAY_SECONDS * 2, U256::from(10)),
            U256::from(10)
        );
        assert_eq!(storage_price(1, 1, U256::from(10)), U256::from(1));
    }
}
