//! The `gateway-spend` ConfigMap: the contract between the gateway, which
//! alone sees what is spent and publishes its budgets there (at most every
//! 30 s, when they changed, never per request), and the operator, which
//! copies them into status. The tenant's budget is the keys of
//! [`BudgetStatus::KEYS`]; each ApiKey's budget is the key
//! `apikey.<metadata.name>`, a JSON object of `amount`, `spent`, `currency`
//! and `window`; the one `updatedAt` dates them all. The gateway writes it, so
//! the operator checks what it reads: an entry not of that shape is left out.

use std::collections::BTreeMap;

use crate::v1alpha1::BudgetStatus;

/// Prefix of the data key of an ApiKey's budget.
pub const API_KEY_ENTRY_PREFIX: &str = "apikey.";

/// The fields of an ApiKey's entry.
const ENTRY_FIELDS: [&str; 4] = ["amount", "spent", "currency", "window"];

/// Longest entry read (a well-formed one is under 150 bytes).
const MAX_ENTRY: usize = 512;

/// Longest data key of a ConfigMap.
const MAX_DATA_KEY: usize = 253;

/// The data key of the budget of ApiKey `name`; `None` when it would be too
/// long for a ConfigMap key (a name of more than 246 characters).
pub fn api_key_entry_key(name: &str) -> Option<String> {
    Some(format!("{API_KEY_ENTRY_PREFIX}{name}")).filter(|k| k.len() <= MAX_DATA_KEY)
}

/// The entry of an ApiKey's budget `status` (without `updatedAt`: the map's dates it).
pub fn api_key_entry(status: &BudgetStatus) -> String {
    let fields = [&status.amount, &status.spent, &status.currency, &status.window];
    let entry: BTreeMap<&str, &String> = ENTRY_FIELDS.into_iter().zip(fields).collect();
    serde_json::to_string(&entry).unwrap_or_default()
}

/// The budget of each ApiKey in the map's `data`, by ApiKey name, dated by its
/// `updatedAt`; an entry not of the shape [`api_key_entry`] writes is left out.
pub fn api_key_budgets(data: &BTreeMap<String, String>) -> BTreeMap<String, BudgetStatus> {
    let updated_at = data.get("updatedAt");
    data.iter()
        .filter_map(|(key, entry)| {
            let name = key.strip_prefix(API_KEY_ENTRY_PREFIX)?;
            Some((name.to_owned(), parse_entry(entry, updated_at)?))
        })
        .collect()
}

fn parse_entry(entry: &str, updated_at: Option<&String>) -> Option<BudgetStatus> {
    if entry.len() > MAX_ENTRY {
        return None;
    }
    let mut fields: BTreeMap<String, String> = serde_json::from_str(entry).ok()?;
    if fields.keys().any(|k| !ENTRY_FIELDS.contains(&k.as_str())) {
        return None;
    }
    fields.extend(updated_at.map(|at| ("updatedAt".to_owned(), at.clone())));
    BudgetStatus::from_data(&fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(spent: &str, window: &str) -> BudgetStatus {
        BudgetStatus {
            amount: "50".into(),
            spent: spent.into(),
            currency: "EUR".into(),
            window: window.into(),
            updated_at: None,
        }
    }

    #[test]
    fn an_api_key_entry_reads_back_as_written_dated_by_the_map() {
        let written = status("12.5", "2026-12");
        let entry = api_key_entry(&written);
        assert_eq!(entry, r#"{"amount":"50","currency":"EUR","spent":"12.5","window":"2026-12"}"#);
        let fixed = status("0", "2026-12-01T09:00:00Z");
        let data = BTreeMap::from([
            ("apikey.ci".to_string(), entry),
            ("apikey.sprint.bot".to_string(), api_key_entry(&fixed)),
            ("updatedAt".to_string(), "2026-12-06T12:00:00Z".to_string()),
            // The tenant's own fields are not an ApiKey's.
            ("spent".to_string(), "99".to_string()),
        ]);
        let read = api_key_budgets(&data);
        let dated = |s: BudgetStatus| BudgetStatus { updated_at: Some("2026-12-06T12:00:00Z".into()), ..s };
        assert_eq!(read, BTreeMap::from([("ci".into(), dated(written)), ("sprint.bot".into(), dated(fixed))]));
    }

    #[test]
    fn an_entry_not_of_the_shape_the_gateway_writes_is_left_out() {
        let good = api_key_entry(&status("1", "2026-12"));
        for bad in [
            r#"{"amount":"50","currency":"EUR","spent":"lots","window":"2026-12"}"#.to_string(),
            r#"{"amount":"50","currency":"EUR","spent":"1"}"#.to_string(),
            r#"{"amount":50,"currency":"EUR","spent":"1","window":"2026-12"}"#.to_string(),
            r#"{"amount":"50","currency":"EUR","spent":"1","window":"2026-12","note":"x"}"#.to_string(),
            r#"{"amount":"50","currency":"EUR","spent":"1","window":"<b>"}"#.to_string(),
            "not json".to_string(),
            // Well-formed but for its length.
            format!("{}{good}", " ".repeat(MAX_ENTRY)),
        ] {
            let data =
                BTreeMap::from([("apikey.ci".to_string(), bad.clone()), ("apikey.ok".to_string(), good.clone())]);
            let read = api_key_budgets(&data);
            assert_eq!(read.keys().collect::<Vec<_>>(), ["ok"], "{bad}");
        }
    }

    #[test]
    fn a_name_too_long_for_a_config_map_key_has_no_entry() {
        assert_eq!(api_key_entry_key("ci").as_deref(), Some("apikey.ci"));
        assert!(api_key_entry_key(&"a".repeat(246)).is_some());
        assert_eq!(api_key_entry_key(&"a".repeat(247)), None);
    }
}
