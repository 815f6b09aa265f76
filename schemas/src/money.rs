//! Exact money: integer nano-credits (1 credit = 10^9 nano-credits), decimal at the edges.
//!
//! Amounts are parsed from decimal text with `rust_decimal` and must be representable exactly;
//! nothing here ever touches floating point.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Nano-credits per credit.
pub const NANOS_PER_CREDIT: i64 = 1_000_000_000;

/// Decimal places a credit amount may have: one nano-credit is the smallest unit.
pub const CREDIT_SCALE: u32 = 9;

/// The most credits an account can be granted in all (10^9 credits, 10^18 nano-credits):
/// every balance, charge and sum of an account then stays far inside an `i64`.
pub const MAX_ACCOUNT_CREDITS: NanoCredits = NanoCredits(1_000_000_000 * NANOS_PER_CREDIT);

/// An amount of money in nano-credits.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NanoCredits(pub i64);

/// Why a credit amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a decimal number.
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    /// Finer than one nano-credit.
    #[error("`{0}` has more than 9 decimal places; the smallest unit is 0.000000001 credits")]
    TooPrecise(String),
    /// Beyond what an i64 of nano-credits holds.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl NanoCredits {
    /// Zero credits.
    pub const ZERO: NanoCredits = NanoCredits(0);

    /// Converts an exact decimal number of credits.
    pub fn from_credits(credits: Decimal) -> Result<NanoCredits, MoneyError> {
        let normalized = credits.normalize();
        if normalized.scale() > CREDIT_SCALE {
            return Err(MoneyError::TooPrecise(credits.to_string()));
        }
        let nanos = normalized
            .checked_mul(Decimal::from(NANOS_PER_CREDIT))
            .ok_or_else(|| MoneyError::TooLarge(credits.to_string()))?;
        i64::try_from(nanos)
            .map(NanoCredits)
            .map_err(|_| MoneyError::TooLarge(credits.to_string()))
    }

    /// Parses decimal text (`"12.5"`, `"100"`, `"1e3"`) as credits.
    pub fn parse_credits(text: &str) -> Result<NanoCredits, MoneyError> {
        let text = text.trim();
        let decimal = Decimal::from_str_exact(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|_| MoneyError::NotANumber(text.to_string()))?;
        NanoCredits::from_credits(decimal)
    }

    /// The amount in credits, exactly.
    pub fn to_credits(self) -> Decimal {
        Decimal::new(self.0, CREDIT_SCALE).normalize()
    }

    /// Whether the amount is above zero.
    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// Sum, or `None` on overflow.
    pub fn checked_add(self, other: NanoCredits) -> Option<NanoCredits> {
        self.0.checked_add(other.0).map(NanoCredits)
    }
}

/// Renders credits as a plain decimal string (`12.5`, `0.000000001`).
impl fmt::Display for NanoCredits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_credits(), f)
    }
}

impl FromStr for NanoCredits {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NanoCredits::parse_credits(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings_exactly() {
        assert_eq!(
            NanoCredits::parse_credits("12.5"),
            Ok(NanoCredits(12_500_000_000))
        );
        assert_eq!(
            NanoCredits::parse_credits("0.000000001"),
            Ok(NanoCredits(1))
        );
        assert_eq!(
            NanoCredits::parse_credits("1e3"),
            Ok(NanoCredits(1_000 * NANOS_PER_CREDIT))
        );
        assert_eq!(
            NanoCredits::parse_credits("0.1000000000"),
            Ok(NanoCredits(100_000_000))
        );
    }

    #[test]
    fn refuses_amounts_finer_than_a_nano_credit_or_too_large() {
        assert!(matches!(
            NanoCredits::parse_credits("0.0000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            NanoCredits::parse_credits("10000000000000"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            NanoCredits::parse_credits("ten"),
            Err(MoneyError::NotANumber(_))
        ));
    }

    #[test]
    fn renders_credits_without_trailing_zeros() {
        assert_eq!(NanoCredits(12_500_000_000).to_string(), "12.5");
        assert_eq!(NanoCredits(1).to_string(), "0.000000001");
        assert_eq!(NanoCredits(-3 * NANOS_PER_CREDIT).to_string(), "-3");
        assert_eq!(NanoCredits::ZERO.to_string(), "0");
    }
}
