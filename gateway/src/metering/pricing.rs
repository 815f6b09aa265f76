//! Prices and charges. A versioned price table (credits per million tokens, per path and per
//! deployment, for input, cached input, output and reasoning tokens); charges computed with
//! `rust_decimal` and rounded once, to the nano-credit, half away from zero; holds rounded up.
//! No floating point anywhere.

use std::collections::BTreeMap;

use lumina_schemas::NanoCredits;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

/// The rounding rule every charge names: the exact decimal charge is rounded once to a whole
/// nano-credit, halves away from zero.
pub const ROUNDING: &str = "half_up_nano";

/// The paths that have prices.
pub const PRICED_PATHS: [&str; 4] = ["fast", "balanced", "reasoning", "embeddings"];

/// `[pricing]` in `lumina.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// Version named by every hold and charge; change it whenever a price changes.
    pub version: String,
    /// `[pricing.paths.<path>]`; a path without an entry keeps its default price.
    pub paths: BTreeMap<String, PriceConfig>,
    /// `[pricing.deployments."<provider>/<model>"]`: overrides the path's price for one
    /// deployment.
    pub deployments: BTreeMap<String, PriceConfig>,
    /// How long a hold without a settlement lives before it is released as an orphan.
    pub hold_ttl_ms: u64,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            version: "default-2026-11".into(),
            paths: BTreeMap::new(),
            deployments: BTreeMap::new(),
            hold_ttl_ms: 10 * 60 * 1000,
        }
    }
}

/// One price, as decimal strings of credits per million tokens.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Uncached prompt tokens.
    pub input: Option<String>,
    /// Completion tokens (other than reasoning).
    pub output: Option<String>,
    /// Prompt tokens served from the provider's cache; default: a quarter of `input`.
    pub cached_input: Option<String>,
    /// Reasoning tokens; default: `output`.
    pub reasoning: Option<String>,
    /// Output tokens a hold assumes when the request sets no `max_tokens` (paths only).
    pub max_output_tokens: Option<u64>,
}

/// Credits per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: Decimal,
    /// Cached prompt tokens.
    pub cached_input: Decimal,
    /// Completion tokens other than reasoning.
    pub output: Decimal,
    /// Reasoning tokens.
    pub reasoning: Decimal,
}

impl Price {
    /// A price with the usual derived defaults.
    pub fn new(input: Decimal, output: Decimal) -> Price {
        Price {
            input,
            cached_input: input / Decimal::from(4),
            output,
            reasoning: output,
        }
    }

    fn max(self, other: Price) -> Price {
        Price {
            input: self.input.max(other.input),
            cached_input: self.cached_input.max(other.cached_input),
            output: self.output.max(other.output),
            reasoning: self.reasoning.max(other.reasoning),
        }
    }
}

/// Token counts a charge is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// All prompt tokens, cached ones included.
    pub prompt: u64,
    /// All completion tokens, reasoning ones included.
    pub completion: u64,
    /// Cached prompt tokens (part of `prompt`).
    pub cached: u64,
    /// Reasoning tokens (part of `completion`).
    pub reasoning: u64,
}

#[derive(Debug, Clone)]
struct PathPrice {
    price: Price,
    max_output_tokens: u64,
}

/// The price table in force.
#[derive(Debug, Clone)]
pub struct PriceTable {
    /// Version named by holds and charges.
    pub version: String,
    paths: BTreeMap<String, PathPrice>,
    deployments: BTreeMap<String, Price>,
    /// Hold lifetime.
    pub hold_ttl_ms: u64,
}

fn default_path(path: &str) -> PathPrice {
    let (input, output, max_output_tokens) = match path {
        "fast" => (Decimal::new(2, 1), Decimal::new(8, 1), 4096),
        "balanced" => (Decimal::from(2), Decimal::from(8), 8192),
        // Input only: an embedding generates no tokens.
        "embeddings" => (Decimal::new(2, 2), Decimal::ZERO, 1),
        _ => (Decimal::from(8), Decimal::from(32), 16_384),
    };
    PathPrice {
        price: Price::new(input, output),
        max_output_tokens,
    }
}

/// The highest price accepted, in credits per million tokens: with token counts bounded as
/// the gateway bounds them, no charge or hold can then leave an `i64` of nano-credits.
pub const MAX_PRICE: u32 = 100_000;

fn parse_price(text: &str, key: &str) -> Result<Decimal, String> {
    let d = Decimal::from_str_exact(text.trim())
        .map_err(|_| format!("{key}: `{text}` is not a decimal number"))?;
    if d.is_sign_negative() {
        return Err(format!("{key}: prices cannot be negative"));
    }
    if d > Decimal::from(MAX_PRICE) {
        return Err(format!(
            "{key}: at most {MAX_PRICE} credits per million tokens"
        ));
    }
    Ok(d)
}

fn apply(base: Price, c: &PriceConfig, key: &str) -> Result<Price, String> {
    let input = match &c.input {
        Some(t) => parse_price(t, &format!("{key}.input"))?,
        None => base.input,
    };
    let output = match &c.output {
        Some(t) => parse_price(t, &format!("{key}.output"))?,
        None => base.output,
    };
    let mut price = Price::new(input, output);
    price.cached_input = match &c.cached_input {
        Some(t) => parse_price(t, &format!("{key}.cached_input"))?,
        None if c.input.is_some() => price.cached_input,
        None => base.cached_input,
    };
    price.reasoning = match &c.reasoning {
        Some(t) => parse_price(t, &format!("{key}.reasoning"))?,
        None if c.output.is_some() => price.reasoning,
        None => base.reasoning,
    };
    Ok(price)
}

impl PriceTable {
    /// The table `config` describes; errors name the offending key.
    pub fn from_config(config: &PricingConfig) -> Result<PriceTable, String> {
        if config.version.trim().is_empty() {
            return Err("pricing.version must not be empty".into());
        }
        if config.hold_ttl_ms == 0 {
            return Err("pricing.hold_ttl_ms must be positive".into());
        }
        let mut paths = BTreeMap::new();
        for path in PRICED_PATHS {
            let mut p = default_path(path);
            if let Some(c) = config.paths.get(path) {
                p.price = apply(p.price, c, &format!("pricing.paths.{path}"))?;
                if let Some(m) = c.max_output_tokens {
                    if m == 0 {
                        return Err(format!(
                            "pricing.paths.{path}.max_output_tokens must be positive"
                        ));
                    }
                    p.max_output_tokens = m;
                }
            }
            paths.insert(path.to_string(), p);
        }
        if let Some(path) = config
            .paths
            .keys()
            .find(|p| !PRICED_PATHS.contains(&p.as_str()))
        {
            return Err(format!(
                "pricing.paths.{path}: expected fast, balanced, reasoning or embeddings"
            ));
        }
        let mut deployments = BTreeMap::new();
        for (id, c) in &config.deployments {
            if !id.contains('/') {
                return Err(format!(
                    "pricing.deployments.\"{id}\": expected \"<provider>/<model>\""
                ));
            }
            if c.max_output_tokens.is_some() {
                return Err(format!(
                    "pricing.deployments.\"{id}\".max_output_tokens: set it on the path"
                ));
            }
            let base = Price::new(Decimal::ZERO, Decimal::ZERO);
            let key = format!("pricing.deployments.\"{id}\"");
            if c.input.is_none() || c.output.is_none() {
                return Err(format!("{key}: input and output are required"));
            }
            deployments.insert(id.clone(), apply(base, c, &key)?);
        }
        Ok(PriceTable {
            version: config.version.clone(),
            paths,
            deployments,
            hold_ttl_ms: config.hold_ttl_ms,
        })
    }

    fn path(&self, path: &str) -> PathPrice {
        self.paths
            .get(path)
            .cloned()
            .unwrap_or_else(|| default_path(path))
    }

    /// The price of `deployment` on `path` (the deployment's own, else the path's).
    pub fn price(&self, path: &str, deployment: Option<&str>) -> Price {
        deployment
            .and_then(|d| self.deployments.get(d).copied())
            .unwrap_or_else(|| self.path(path).price)
    }

    /// The exact charge for `tokens` at `price`, rounded once with [`ROUNDING`].
    pub fn charge(price: &Price, tokens: Tokens) -> NanoCredits {
        let exact = exact_nanos(price, tokens);
        let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        NanoCredits(i64::try_from(rounded).unwrap_or(i64::MAX))
    }

    /// The hold for a request on `path` that may use `deployments`: the prompt estimate plus
    /// `max_tokens` (or the path's default maximum) of output, at the highest price among the
    /// path and its deployments, rounded up. A charge never exceeds it unless the upstream
    /// used more tokens than estimated or allowed.
    pub fn hold(
        &self,
        path: &str,
        deployments: &[&str],
        prompt_tokens: u64,
        max_tokens: Option<u64>,
        choices: u32,
    ) -> NanoCredits {
        let p = self.path(path);
        let price = deployments
            .iter()
            .filter_map(|d| self.deployments.get(*d))
            .fold(p.price, |acc, d| acc.max(*d));
        let completion = self.output_allowance(path, max_tokens, choices);
        let worst = Price {
            input: price.input.max(price.cached_input),
            cached_input: price.input.max(price.cached_input),
            output: price.output.max(price.reasoning),
            reasoning: price.output.max(price.reasoning),
        };
        let exact = exact_nanos(
            &worst,
            Tokens {
                prompt: prompt_tokens,
                completion,
                cached: 0,
                reasoning: 0,
            },
        );
        let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::AwayFromZero);
        NanoCredits(i64::try_from(rounded).unwrap_or(i64::MAX))
    }

    /// Output tokens a hold assumes on `path` without `max_tokens`.
    pub fn max_output_tokens(&self, path: &str) -> u64 {
        self.path(path).max_output_tokens
    }

    /// The completion tokens a request may be billed for: `max_tokens` (or the path's
    /// default maximum) for each of its `choices`. Its hold covers exactly this much output.
    pub fn output_allowance(&self, path: &str, max_tokens: Option<u64>, choices: u32) -> u64 {
        max_tokens
            .unwrap_or_else(|| self.max_output_tokens(path))
            .saturating_mul(u64::from(choices.max(1)))
    }
}

/// Σ tokens × price per million, in nano-credits (× 10^9 / 10^6 = × 1000), exact.
fn exact_nanos(price: &Price, t: Tokens) -> Decimal {
    let cached = t.cached.min(t.prompt);
    let reasoning = t.reasoning.min(t.completion);
    let parts = [
        (t.prompt - cached, price.input),
        (cached, price.cached_input),
        (t.completion - reasoning, price.output),
        (reasoning, price.reasoning),
    ];
    let thousand = Decimal::from(1000);
    parts
        .iter()
        .try_fold(Decimal::ZERO, |sum, &(tokens, per_million)| {
            Decimal::from(tokens)
                .checked_mul(per_million)?
                .checked_mul(thousand)
                .and_then(|v| sum.checked_add(v))
        })
        .unwrap_or(Decimal::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<PriceTable, String> {
        let c: PricingConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        PriceTable::from_config(&c)
    }

    fn price(input: &str, output: &str) -> Price {
        Price::new(input.parse().unwrap(), output.parse().unwrap())
    }

    #[test]
    fn a_charge_is_tokens_times_price_per_million_in_nano_credits() {
        let p = price("2", "8");
        let t = Tokens {
            prompt: 1_000_000,
            completion: 500_000,
            cached: 0,
            reasoning: 0,
        };
        // 1M × 2 + 0.5M × 8 = 6 credits.
        assert_eq!(PriceTable::charge(&p, t), NanoCredits(6_000_000_000));
        let one = Tokens {
            prompt: 1,
            completion: 0,
            cached: 0,
            reasoning: 0,
        };
        assert_eq!(PriceTable::charge(&p, one), NanoCredits(2_000));
    }

    #[test]
    fn rounding_happens_once_half_away_from_zero() {
        // 0.0015 credits per million = 0.0015 nano per token… ×1000 = 1.5 nano per token.
        let p = price("0.0015", "0");
        let t = |n| Tokens {
            prompt: n,
            completion: 0,
            cached: 0,
            reasoning: 0,
        };
        assert_eq!(PriceTable::charge(&p, t(1)), NanoCredits(2)); // 1.5 → 2
        assert_eq!(PriceTable::charge(&p, t(3)), NanoCredits(5)); // 4.5 → 5
        assert_eq!(PriceTable::charge(&p, t(2)), NanoCredits(3)); // exactly 3
        // Rounded once for the whole charge, not per part: 0.4 + 0.4 = 0.8 → 1.
        let p = price("0.0004", "0.0004");
        let t = Tokens {
            prompt: 1,
            completion: 1,
            cached: 0,
            reasoning: 0,
        };
        assert_eq!(PriceTable::charge(&p, t), NanoCredits(1));
        let below_half = Tokens {
            prompt: 1,
            completion: 0,
            cached: 0,
            reasoning: 0,
        };
        assert_eq!(PriceTable::charge(&p, below_half), NanoCredits(0)); // 0.4 → 0
    }

    #[test]
    fn cached_and_reasoning_tokens_have_their_own_prices() {
        let mut p = price("4", "10");
        p.cached_input = "1".parse().unwrap();
        p.reasoning = "20".parse().unwrap();
        let t = Tokens {
            prompt: 1000,
            completion: 1000,
            cached: 400,
            reasoning: 300,
        };
        // 600×4 + 400×1 + 700×10 + 300×20 = 2400 + 400 + 7000 + 6000 = 15800 per-million units.
        assert_eq!(PriceTable::charge(&p, t), NanoCredits(15_800_000));
        // More cached or reasoning tokens than their totals are clamped.
        let odd = Tokens {
            prompt: 10,
            completion: 10,
            cached: 50,
            reasoning: 50,
        };
        assert_eq!(PriceTable::charge(&p, odd), NanoCredits(10_000 + 200_000));
    }

    #[test]
    fn large_token_counts_stay_exact_and_zero_prices_charge_nothing() {
        let p = price("0.000000001", "123456.789");
        let t = Tokens {
            prompt: 1_000_000_000_000,
            completion: 1_000_000,
            cached: 0,
            reasoning: 0,
        };
        // 10^12 × 10^-9 × 1000 = 10^6; 10^6 × 123456.789 × 1000 = 123456789000000.
        assert_eq!(
            PriceTable::charge(&p, t),
            NanoCredits(1_000_000 + 123_456_789_000_000)
        );
        let free = price("0", "0");
        assert_eq!(PriceTable::charge(&free, t), NanoCredits(0));
        let huge = Tokens {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: 0,
            reasoning: 0,
        };
        assert_eq!(
            PriceTable::charge(&price("99999", "99999"), huge),
            NanoCredits(i64::MAX)
        );
    }

    #[test]
    fn holds_cover_the_worst_price_and_round_up() {
        let t = table(
            "version = \"v7\"\n[paths.fast]\ninput = \"1\"\noutput = \"3\"\nmax_output_tokens = 100\n\
             [deployments.\"a/m\"]\ninput = \"2\"\noutput = \"1\"\n",
        )
        .unwrap();
        assert_eq!(t.version, "v7");
        // 10 prompt × max(1, 2) + 100 output × max(3, 1) = 20 + 300 = 320 ×1000 nano.
        assert_eq!(t.hold("fast", &["a/m"], 10, None, 1), NanoCredits(320_000));
        assert_eq!(
            t.hold("fast", &[], 10, Some(5), 1),
            NanoCredits(10_000 + 15_000)
        );
        // Each of n choices may write max_tokens: the hold covers all of them.
        assert_eq!(
            t.hold("fast", &[], 10, Some(5), 3),
            NanoCredits(10_000 + 3 * 15_000)
        );
        assert_eq!(t.output_allowance("fast", None, 4), 400);
        let tiny = table("[paths.fast]\ninput = \"0.0000001\"\noutput = \"0\"\n").unwrap();
        assert_eq!(tiny.hold("fast", &[], 1, Some(0), 1), NanoCredits(1)); // 0.0001 → 1
        let charge = PriceTable::charge(
            &t.price("fast", Some("a/m")),
            Tokens {
                prompt: 10,
                completion: 100,
                cached: 0,
                reasoning: 0,
            },
        );
        assert!(charge <= t.hold("fast", &["a/m"], 10, None, 1));
    }

    #[test]
    fn defaults_price_every_path_and_bad_tables_name_the_key() {
        let t = PriceTable::from_config(&PricingConfig::default()).unwrap();
        for path in PRICED_PATHS {
            assert!(t.price(path, None).input > Decimal::ZERO, "{path}");
        }
        for path in ["fast", "balanced", "reasoning"] {
            assert!(t.price(path, None).output > Decimal::ZERO);
        }
        assert_eq!(t.price("embeddings", None).output, Decimal::ZERO);
        assert_eq!(t.output_allowance("embeddings", Some(0), 1), 0);
        for (text, key) in [
            (
                "[paths.fast]\ninput = \"cheap\"\n",
                "pricing.paths.fast.input",
            ),
            ("[paths.fast]\ninput = \"-1\"\n", "pricing.paths.fast.input"),
            ("[paths.slow]\ninput = \"1\"\n", "pricing.paths.slow"),
            (
                "[deployments.nope]\ninput = \"1\"\noutput = \"1\"\n",
                "pricing.deployments",
            ),
            ("[deployments.\"a/b\"]\ninput = \"1\"\n", "input and output"),
            ("version = \"\"\n", "pricing.version"),
            (
                "[paths.fast]\noutput = \"100000.000000001\"\n",
                "pricing.paths.fast.output: at most 100000",
            ),
        ] {
            let e = table(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
