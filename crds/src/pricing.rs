//! Prices: which one applies to a tenant's model target, and what a request cost.
//!
//! A target's price is, first found: its own `price` in the Tenant, the
//! cluster's [`ModelPrice`] for the provider's type and the model, the shipped
//! default list ([`defaults`]). Only prices in the tenant's currency apply.
//! Amounts are [`Decimal`]s, never floating point; a request's cost is kept as
//! an integer count of nano-units of the currency (1e-9), rounded once per
//! request, half away from zero.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::OnceLock;

use rust_decimal::{Decimal, RoundingStrategy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::v1alpha1::{ModelPrice, ModelPriceSpec, Price, ProviderType};

/// The shipped default price list, as YAML (committed beside this file).
pub const DEFAULTS_YAML: &str = include_str!("pricing/defaults.yaml");

/// The shipped default price list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultPrices {
    /// When the list was last checked against the providers' price pages.
    pub checked: String,
    /// One entry per provider type and model.
    pub prices: Vec<ModelPriceSpec>,
}

/// The shipped default prices (parsed once; a test proves they parse).
pub fn defaults() -> &'static DefaultPrices {
    static DEFAULTS: OnceLock<DefaultPrices> = OnceLock::new();
    DEFAULTS
        .get_or_init(|| serde_yaml::from_str(DEFAULTS_YAML).unwrap_or_else(|e| panic!("pricing/defaults.yaml: {e}")))
}

/// Where a target's price came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PriceSource {
    /// The target's own `price` in the Tenant.
    Tenant,
    /// The cluster's ModelPrice of this name.
    ModelPrice(String),
    /// The shipped default list, checked on this date.
    Default(String),
}

/// The price of one model target, as the gateway applies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetPrice {
    /// Provider name (spec.providers[].name).
    pub provider: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Per million input tokens not read from a cache (a decimal string).
    pub input_per_million: String,
    /// Per million output tokens.
    pub output_per_million: String,
    /// Per million input tokens read from the provider's cache.
    pub cached_input_per_million: String,
    /// Per answered request.
    pub per_request: String,
    /// Where it came from.
    #[serde(with = "serde_yaml::with::singleton_map")]
    #[schemars(with = "PriceSource")]
    pub source: PriceSource,
    /// Content hash of the currency and the four amounts: recorded with every cost computed
    /// from this price, so a cost can be traced to the price that made it.
    pub version: String,
}

/// The prices of a tenant's targets, in its currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PricingConfig {
    /// ISO 4217 code.
    pub currency: String,
    /// One entry per priced target (`provider`, `model`), sorted.
    pub targets: Vec<TargetPrice>,
}

/// Why a price cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a non-negative decimal number with at most 9 digits before and after the point")]
pub struct PriceError {
    /// The field, relative to the price (`inputPerMillion`, ...).
    pub field: &'static str,
    /// What it says.
    pub value: String,
}

/// A price's four amounts, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amounts {
    /// Per million input tokens not read from a cache.
    pub input: Decimal,
    /// Per million output tokens.
    pub output: Decimal,
    /// Per million cached input tokens.
    pub cached_input: Decimal,
    /// Per answered request.
    pub per_request: Decimal,
}

/// Nano-units in one unit of a currency.
pub const NANOS_PER_UNIT: i64 = 1_000_000_000;

fn amount(field: &'static str, value: &str) -> Result<Decimal, PriceError> {
    let bad = || PriceError { field, value: value.to_owned() };
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let shape = !whole.is_empty()
        && whole.len() <= 9
        && (whole == "0" || !whole.starts_with('0'))
        && digits(whole)
        && (fraction.len() <= 9 && digits(fraction))
        && (value.contains('.') != fraction.is_empty());
    if !shape {
        return Err(bad());
    }
    Decimal::from_str(value).map(|d| d.normalize()).map_err(|_| bad())
}

impl Amounts {
    /// Parses a CRD price: output and per-request default to zero, cached input to the input price.
    pub fn parse(price: &Price) -> Result<Self, PriceError> {
        let input = amount("inputPerMillion", &price.input_per_million)?;
        let optional =
            |field, value: &Option<String>, default| value.as_deref().map_or(Ok(default), |v| amount(field, v));
        Ok(Self {
            input,
            output: optional("outputPerMillion", &price.output_per_million, Decimal::ZERO)?,
            cached_input: optional("cachedInputPerMillion", &price.cached_input_per_million, input)?,
            per_request: optional("perRequest", &price.per_request, Decimal::ZERO)?,
        })
    }

    /// Parses a rendered target price.
    pub fn of_target(price: &TargetPrice) -> Result<Self, PriceError> {
        Ok(Self {
            input: amount("inputPerMillion", &price.input_per_million)?,
            output: amount("outputPerMillion", &price.output_per_million)?,
            cached_input: amount("cachedInputPerMillion", &price.cached_input_per_million)?,
            per_request: amount("perRequest", &price.per_request)?,
        })
    }

    /// The content hash of these amounts in `currency`: 12 hex digits.
    pub fn version(&self, currency: &str) -> String {
        let text = format!("{currency}|{}|{}|{}|{}", self.input, self.output, self.cached_input, self.per_request);
        hex::encode(&Sha256::digest(text.as_bytes())[..6])
    }

    /// The same price in nano-units per token and per request (exact: a price per
    /// million tokens has at most 9 decimals, so a rate has at most 6).
    pub fn rates(&self) -> Rates {
        // 1e9 nano-units per unit / 1e6 tokens per million.
        let per_token = |price: Decimal| price * Decimal::from(NANOS_PER_UNIT / 1_000_000);
        Rates {
            input: per_token(self.input),
            cached_input: per_token(self.cached_input),
            output: per_token(self.output),
            per_request: self.per_request * Decimal::from(NANOS_PER_UNIT),
        }
    }
}

/// A price as the request path applies it: nano-units per token and per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Per input token not read from a cache.
    pub input: Decimal,
    /// Per input token read from a cache.
    pub cached_input: Decimal,
    /// Per output token.
    pub output: Decimal,
    /// Per answered request.
    pub per_request: Decimal,
}

impl Rates {
    /// What one answered request with this usage cost, in nano-units of the currency:
    /// `prompt` input tokens of which `cached` were read from a cache, and
    /// `completion` output tokens; exact, then rounded once, half away from zero.
    /// Saturates at `i64::MAX` (no real usage comes near).
    pub fn cost_nanos(&self, prompt: u64, cached: u64, completion: u64) -> i64 {
        let cached = cached.min(prompt);
        let part = |tokens: u64, rate: Decimal| Decimal::from(tokens).checked_mul(rate);
        [part(prompt - cached, self.input), part(cached, self.cached_input), part(completion, self.output)]
            .into_iter()
            .try_fold(self.per_request, |sum, part| sum.checked_add(part?))
            .map(|nanos| nanos.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
            .and_then(|nanos| i64::try_from(nanos).ok())
            .unwrap_or(i64::MAX)
    }
}

impl Rates {
    /// The highest of each rate among `rates` (an input token priced at the higher of its
    /// cached and uncached rates): what a request routed to any of them may cost at most.
    /// `None` when `rates` is empty or one of them is `None` (an unpriced target).
    pub fn worst<'a>(rates: impl IntoIterator<Item = Option<&'a Rates>>) -> Option<Rates> {
        rates.into_iter().try_fold(None::<Rates>, |worst, r| {
            let r = r?;
            let input = r.input.max(r.cached_input);
            Some(Some(match worst {
                None => Rates { input, cached_input: input, output: r.output, per_request: r.per_request },
                Some(w) => Rates {
                    input: w.input.max(input),
                    cached_input: w.input.max(input),
                    output: w.output.max(r.output),
                    per_request: w.per_request.max(r.per_request),
                },
            }))
        })?
    }
}

/// Parses a price per call (`pricePerCall` of an McpConnection) into nano-units.
pub fn per_call_nanos(value: &str) -> Result<u64, PriceError> {
    let d = amount("pricePerCall", value)?;
    u64::try_from(d * Decimal::from(NANOS_PER_UNIT))
        .map_err(|_| PriceError { field: "pricePerCall", value: value.into() })
}

/// Parses a budget amount (`"12.50"`) into nano-units: a decimal of at most
/// [`MAX_BUDGET_UNITS`](crate::v1alpha1::MAX_BUDGET_UNITS) with up to 9 decimals.
pub fn budget_nanos(value: &str) -> Result<u64, String> {
    let max = crate::v1alpha1::MAX_BUDGET_UNITS;
    let bad = || format!("{value:?} is not a decimal amount of at most {max} with up to 9 decimals");
    let d = amount("amount", value).map_err(|_| bad())?;
    if d > Decimal::from(max) {
        return Err(bad());
    }
    u64::try_from(d * Decimal::from(NANOS_PER_UNIT)).map_err(|_| bad())
}

/// Checks what the API server's validation may not have (a config written by
/// hand, an older CRD): the amount, and a fixed window's start and length.
pub fn check_budget(budget: &crate::v1alpha1::Budget) -> Result<(), String> {
    use crate::v1alpha1::BudgetPeriod;
    budget_nanos(&budget.amount).map_err(|e| format!("amount: {e}"))?;
    match (budget.period, &budget.fixed_window) {
        (BudgetPeriod::Fixed, Some(w)) => w.seconds().map(|_| ()),
        (BudgetPeriod::Fixed, None) => Err("period Fixed needs fixedWindow".into()),
        (_, Some(_)) => Err("fixedWindow is only for period Fixed".into()),
        (_, None) => Ok(()),
    }
}

/// `nanos` nano-units as a decimal string of units (`1500000` is `"0.0015"`).
pub fn format_nanos(nanos: i64) -> String {
    Decimal::new(nanos, 9).normalize().to_string()
}

/// One target of a tenant: provider name and type, and the model.
#[derive(Clone, Debug)]
pub struct TargetRef<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Its type.
    pub provider_type: ProviderType,
    /// Model sent to it.
    pub model: &'a str,
    /// The target's own price.
    pub price: Option<&'a Price>,
    /// Where its own price sits in the Tenant (`spec.models[0].targets[1].price`).
    pub field: String,
}

/// What [`resolve`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The priced targets.
    pub pricing: PricingConfig,
    /// `provider/model` of the targets without a price in the currency, sorted.
    pub unpriced: Vec<String>,
    /// Targets' own prices that do not parse: (field, problem).
    pub invalid: Vec<(String, PriceError)>,
}

/// The price of every target in `currency`: its own, else the cluster's
/// ModelPrice (the first by name when several match), else the default list's.
/// ModelPrices whose amounts do not parse are passed over (the API server's
/// validation keeps them out of a cluster).
pub fn resolve<'a>(
    currency: &str,
    targets: impl IntoIterator<Item = TargetRef<'a>>,
    model_prices: &[ModelPrice],
) -> Resolved {
    let mut cluster: BTreeMap<(ProviderType, &str), (&str, Amounts)> = BTreeMap::new();
    let mut by_name: Vec<&ModelPrice> = model_prices.iter().filter(|p| p.spec.currency == currency).collect();
    by_name.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for p in by_name {
        if let Ok(amounts) = Amounts::parse(&p.spec.price) {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            cluster.entry((p.spec.provider, p.spec.model.as_str())).or_insert((name, amounts));
        }
    }
    let shipped = defaults();
    let default_of = |provider: ProviderType, model: &str| {
        shipped
            .prices
            .iter()
            .find(|p| p.provider == provider && p.model == model && p.currency == currency)
            .and_then(|p| Amounts::parse(&p.price).ok())
    };
    let mut out = Resolved {
        pricing: PricingConfig { currency: currency.to_owned(), targets: Vec::new() },
        ..Default::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    for t in targets {
        if !seen.insert((t.provider, t.model)) {
            continue;
        }
        let found = match t.price.map(Amounts::parse) {
            Some(Ok(amounts)) => Some((amounts, PriceSource::Tenant)),
            Some(Err(e)) => {
                out.invalid.push((t.field.clone(), e));
                None
            }
            None => cluster
                .get(&(t.provider_type, t.model))
                .map(|(name, amounts)| (*amounts, PriceSource::ModelPrice((*name).to_owned())))
                .or_else(|| {
                    default_of(t.provider_type, t.model).map(|a| (a, PriceSource::Default(shipped.checked.clone())))
                }),
        };
        match found {
            Some((amounts, source)) => out.pricing.targets.push(TargetPrice {
                provider: t.provider.to_owned(),
                model: t.model.to_owned(),
                input_per_million: amounts.input.to_string(),
                output_per_million: amounts.output.to_string(),
                cached_input_per_million: amounts.cached_input.to_string(),
                per_request: amounts.per_request.to_string(),
                source,
                version: amounts.version(currency),
            }),
            None => out.unpriced.push(format!("{}/{}", t.provider, t.model)),
        }
    }
    out.pricing.targets.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
    out.unpriced.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: &str, output: Option<&str>, cached: Option<&str>, per_request: Option<&str>) -> Price {
        Price {
            input_per_million: input.into(),
            output_per_million: output.map(Into::into),
            cached_input_per_million: cached.map(Into::into),
            per_request: per_request.map(Into::into),
        }
    }

    /// What a request with this usage costs at `a`, as the gateway prices it.
    fn cost(a: &Amounts, prompt: u64, cached: u64, completion: u64) -> i64 {
        a.rates().cost_nanos(prompt, cached, completion)
    }

    #[test]
    fn a_budget_is_checked_whole_amount_and_window() {
        use crate::v1alpha1::{Budget, BudgetPeriod};
        assert_eq!(check_budget(&Budget::fixed("5", "2026-12-07T09:00:00Z", "336h")), Ok(()));
        assert!(check_budget(&Budget::new("lots", BudgetPeriod::Day)).expect_err("amount").starts_with("amount: "));
        let e = check_budget(&Budget::fixed("5", "next monday", "336h")).expect_err("start");
        assert!(e.starts_with("fixedWindow.start: "), "{e}");
        let e = check_budget(&Budget::fixed("5", "2026-12-07T09:00:00Z", "2w")).expect_err("length");
        assert!(e.contains("fixedWindow.length \"2w\""), "{e}");
        let e = check_budget(&Budget { period: BudgetPeriod::Day, ..Budget::fixed("5", "2026-12-07T09:00:00Z", "1h") });
        assert_eq!(e, Err("fixedWindow is only for period Fixed".into()));
        let e = check_budget(&Budget::new("5", BudgetPeriod::Fixed));
        assert_eq!(e, Err("period Fixed needs fixedWindow".into()));
    }

    #[test]
    fn budgets_parse_to_exact_nano_units_up_to_the_cap() {
        assert_eq!(budget_nanos("12.50"), Ok(12_500_000_000));
        assert_eq!(budget_nanos("0"), Ok(0));
        assert_eq!(budget_nanos("0.000000001"), Ok(1));
        assert_eq!(budget_nanos("9000000"), Ok(9_000_000_000_000_000));
        assert!((9_000_000_000_000_000u64 as f64) < 2f64.powi(53), "exact in a Lua number");
        for bad in ["9000000.5", "-1", "1e3", "", "01", "1.0000000001"] {
            let e = budget_nanos(bad).expect_err(bad);
            assert!(e.contains("at most 9000000"), "{e}");
        }
    }

    #[test]
    fn the_worst_rates_take_each_rate_at_its_highest() {
        let a = Amounts::parse(&price("2", Some("8"), Some("0.5"), None)).expect("a").rates();
        let b = Amounts::parse(&price("1", Some("10"), Some("3"), Some("0.01"))).expect("b").rates();
        let w = Rates::worst([Some(&a), Some(&b)]).expect("priced");
        // Input: b's cached rate (3) beats a's input (2); output 10; per request 0.01.
        assert_eq!(w.cost_nanos(1_000_000, 0, 1_000_000), 3_000_000_000 + 10_000_000_000 + 10_000_000);
        assert_eq!(w.cost_nanos(1_000_000, 1_000_000, 0), 3_010_000_000, "cached tokens cost the worst input rate");
        assert_eq!(Rates::worst([Some(&a), None]), None, "an unpriced target has no worst case");
        assert_eq!(Rates::worst(std::iter::empty()), None);
    }

    #[test]
    fn the_shipped_defaults_parse_and_name_each_model_once() {
        let d = defaults();
        assert!(d.prices.len() >= 10, "{} prices", d.prices.len());
        let mut keys = std::collections::BTreeSet::new();
        for p in &d.prices {
            Amounts::parse(&p.price).unwrap_or_else(|e| panic!("{:?}/{}: {e}", p.provider, p.model));
            assert!(keys.insert((p.provider, &p.model, &p.currency)), "{:?}/{} listed twice", p.provider, p.model);
        }
    }

    #[test]
    fn cost_is_exact_decimal_rounded_once_half_away_from_zero() {
        // gpt-4o-mini: 0.15 / 0.60 / 0.075 per million.
        let a = Amounts::parse(&price("0.15", Some("0.60"), Some("0.075"), None)).expect("price");
        // 1000 prompt tokens (400 cached), 500 completion:
        // 600*0.15 + 400*0.075 + 500*0.60 = 90 + 30 + 300 = 420 per million = 0.00042.
        assert_eq!(cost(&a, 1000, 400, 500), 420_000);
        // A token at 0.075 per million is 75 nano-units.
        assert_eq!(cost(&a, 1, 1, 0), 75);
        // Fractions of a nano-unit are rounded once per request, not per part.
        let fine = Amounts::parse(&price("0.0375", Some("0.0001"), Some("0.0004"), None)).expect("price");
        assert_eq!(cost(&fine, 1, 0, 0), 38); // 37.5 -> 38
        assert_eq!(cost(&fine, 0, 0, 4), 0); // 0.4 -> 0
        assert_eq!(cost(&fine, 1, 1, 4), 1); // 0.4 + 0.4 = 0.8 -> 1, where parts rounded apiece give 0
        assert_eq!(cost(&fine, 0, 0, 5), 1); // 0.5 -> 1, half away from zero
        // Absent cached price: the input price. Per-request fee added once.
        let b = Amounts::parse(&price("3", Some("15"), None, Some("0.001"))).expect("price");
        assert_eq!(b.cached_input, b.input);
        assert_eq!(cost(&b, 1_000_000, 500_000, 0), 3_001_000_000);
        // Cached beyond prompt is clamped; no overflow panics.
        assert_eq!(cost(&b, 0, 10, 0), 1_000_000);
        assert_eq!(cost(&b, u64::MAX, 0, u64::MAX), i64::MAX);
        assert_eq!(format_nanos(420_000), "0.00042");
        assert_eq!(format_nanos(3_001_000_000), "3.001");
        assert_eq!(format_nanos(0), "0");
    }

    #[test]
    fn amounts_are_checked_field_by_field_and_the_version_ignores_spelling() {
        for bad in ["", "-1", "1e3", "0.1234567891", "01", "1.", ".5", "1,5", "NaN", "1000000000"] {
            let e = Amounts::parse(&price(bad, None, None, None)).expect_err(bad);
            assert_eq!(e.field, "inputPerMillion", "{bad}");
        }
        let e = Amounts::parse(&price("1", None, Some("x"), None)).expect_err("cached");
        assert_eq!(e.field, "cachedInputPerMillion");
        assert_eq!(
            e.to_string(),
            "\"x\" is not a non-negative decimal number with at most 9 digits before and after the point"
        );
        let a = Amounts::parse(&price("0.150", Some("0.6"), None, None)).expect("price");
        let b = Amounts::parse(&price("0.15", Some("0.600000"), Some("0.15"), Some("0"))).expect("price");
        assert_eq!(a, b);
        assert_eq!(a.version("USD"), b.version("USD"));
        assert_ne!(a.version("USD"), a.version("EUR"));
        let c = Amounts::parse(&price("0.15", Some("0.61"), None, None)).expect("price");
        assert_ne!(a.version("USD"), c.version("USD"));
    }

    fn model_price(name: &str, provider: ProviderType, model: &str, currency: &str, input: &str) -> ModelPrice {
        ModelPrice::new(
            name,
            ModelPriceSpec {
                provider,
                model: model.into(),
                currency: currency.into(),
                price: price(input, Some("1"), None, None),
            },
        )
    }

    #[test]
    fn a_targets_own_price_beats_the_clusters_which_beats_the_default() {
        let own = price("9", None, None, None);
        let target = |provider, model, price| TargetRef {
            provider,
            provider_type: ProviderType::Openai,
            model,
            price,
            field: "spec.models[0].targets[0].price".into(),
        };
        let cluster = [
            model_price("z-late", ProviderType::Openai, "gpt-4o", "USD", "7"),
            model_price("a-first", ProviderType::Openai, "gpt-4o", "USD", "5"),
            model_price("euro", ProviderType::Openai, "gpt-4o-mini", "EUR", "4"),
            model_price("anthropic", ProviderType::Anthropic, "gpt-4.1", "USD", "4"),
        ];
        let r = resolve(
            "USD",
            [
                target("a", "gpt-4o", Some(&own)),
                target("b", "gpt-4o", None),
                target("b", "gpt-4o", None),
                target("c", "gpt-4o-mini", None),
                target("d", "gpt-4.1", None),
                target("e", "my-finetune", None),
            ],
            &cluster,
        );
        let got: Vec<(&str, &str, &PriceSource)> =
            r.pricing.targets.iter().map(|t| (t.provider.as_str(), t.input_per_million.as_str(), &t.source)).collect();
        let checked = PriceSource::Default(defaults().checked.clone());
        assert_eq!(
            got,
            [
                ("a", "9", &PriceSource::Tenant),
                ("b", "5", &PriceSource::ModelPrice("a-first".into())),
                ("c", "0.15", &checked),
                ("d", "2", &checked),
            ]
        );
        assert_eq!(r.unpriced, ["e/my-finetune"]);
        assert!(r.invalid.is_empty());
        // In euros only the euro ModelPrice applies: the defaults are in dollars.
        let r = resolve("EUR", [target("c", "gpt-4o-mini", None), target("b", "gpt-4o", None)], &cluster);
        assert_eq!(r.pricing.targets.len(), 1);
        assert_eq!(r.pricing.targets[0].input_per_million, "4");
        assert_eq!(r.unpriced, ["b/gpt-4o"]);
        let bad = price("x", None, None, None);
        let r = resolve("USD", [target("a", "gpt-4o", Some(&bad))], &cluster);
        assert_eq!(r.invalid.len(), 1);
        assert_eq!(r.invalid[0].0, "spec.models[0].targets[0].price");
        assert_eq!(r.unpriced, ["a/gpt-4o"]);
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Prints what pricing one request costs (`cargo test --release -p tenantgate-crds speed -- --nocapture`).
    #[test]
    fn cost_of_pricing_a_request() {
        let rates = Amounts::parse(&Price {
            input_per_million: "2.5".into(),
            output_per_million: Some("10".into()),
            cached_input_per_million: Some("1.25".into()),
            per_request: None,
        })
        .expect("price")
        .rates();
        const N: u64 = 200_000;
        let started = std::time::Instant::now();
        let mut sum = 0i64;
        for i in 0..N {
            sum = sum.wrapping_add(std::hint::black_box(&rates).cost_nanos(1_000 + i % 7, 400, 200 + i % 3));
        }
        let each = started.elapsed().as_secs_f64() * 1e9 / N as f64;
        assert!(sum > 0);
        eprintln!("pricing a request: {each:.0} ns");
    }
}
