//! What `bucket setup` changed and what `bucket check` found, ready for people and for `--json`.

use serde::Serialize;

/// The outcome of [`setup`](super::setup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SetupReport {
    /// Whether the bucket was created (rather than an existing one adopted).
    pub created: bool,
    /// The settings that were written, with what they were before.
    pub changes: Vec<SettingChange>,
    /// The settings that were already as wanted.
    pub unchanged: Vec<String>,
    /// Things that work but that a person should know about.
    pub warnings: Vec<String>,
}

impl SetupReport {
    /// Whether anything was created or written.
    pub fn changed(&self) -> bool {
        self.created || !self.changes.is_empty()
    }
}

/// One setting `setup` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingChange {
    /// Which setting (`encryption`, `policy statement PalisadeDenyInsecureTransport`, ...).
    pub setting: String,
    /// What it was (`absent` when there was nothing).
    pub before: String,
    /// What it is now (`absent` when it was removed).
    pub after: String,
}

/// The outcome of [`check`](super::check): one item per setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Every setting the spec asks for, in the order `setup` applies them.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether any setting differs from the spec or is missing.
    pub fn has_drift(&self) -> bool {
        self.items.iter().any(|item| item.status != Status::Ok)
    }
}

/// One setting as found in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckItem {
    /// Which setting.
    pub setting: String,
    /// Whether it is as the spec asks.
    pub status: Status,
    /// What the spec asks for.
    pub expected: String,
    /// What the bucket has.
    pub actual: String,
}

/// How a setting compares with the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As the spec asks.
    Ok,
    /// Present, but other than the spec asks (or present where the spec wants it gone).
    Drift,
    /// Not set at all.
    Missing,
}

/// A setting's wanted and actual state, shared by `setup` and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Comparison {
    pub setting: String,
    pub expected: String,
    pub actual: String,
    pub status: Status,
}

/// What a setting that is not there at all is called in reports.
pub(crate) const ABSENT: &str = "absent";

impl Comparison {
    /// Compares two descriptions of the same setting; `None` means the setting is not there.
    pub fn of(setting: impl Into<String>, expected: String, actual: Option<String>) -> Self {
        let status = match &actual {
            None => Status::Missing,
            Some(actual) if *actual == expected => Status::Ok,
            Some(_) => Status::Drift,
        };
        Self {
            setting: setting.into(),
            expected,
            actual: actual.unwrap_or_else(|| ABSENT.into()),
            status,
        }
    }
}

impl From<Comparison> for CheckItem {
    fn from(comparison: Comparison) -> Self {
        Self {
            setting: comparison.setting,
            status: comparison.status,
            expected: comparison.expected,
            actual: comparison.actual,
        }
    }
}

impl SetupReport {
    /// Notes each comparison as changed or unchanged; true when any needs writing.
    pub(crate) fn record(&mut self, comparisons: &[Comparison]) -> bool {
        for comparison in comparisons {
            if comparison.status == Status::Ok {
                self.unchanged.push(comparison.setting.clone());
            } else {
                self.changes.push(SettingChange {
                    setting: comparison.setting.clone(),
                    before: comparison.actual.clone(),
                    after: comparison.expected.clone(),
                });
            }
        }
        comparisons.iter().any(|c| c.status != Status::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_become_items_and_changes() {
        let ok = Comparison::of("versioning", "Enabled".into(), Some("Enabled".into()));
        let drift = Comparison::of("versioning", "Enabled".into(), Some("Suspended".into()));
        let missing = Comparison::of("encryption", "AES256".into(), None);
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(drift.status, Status::Drift);
        assert_eq!(
            (missing.status, missing.actual.as_str()),
            (Status::Missing, ABSENT)
        );

        let mut report = SetupReport::default();
        assert!(!report.record(std::slice::from_ref(&ok)));
        assert!(!report.changed());
        assert!(report.record(&[drift.clone(), missing]));
        assert_eq!(report.unchanged, ["versioning"]);
        assert_eq!(report.changes[0].before, "Suspended");
        assert!(report.changed());

        let check = CheckReport {
            items: vec![ok.into()],
        };
        assert!(!check.has_drift());
        let check = CheckReport {
            items: vec![drift.into()],
        };
        assert!(check.has_drift());
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["items"][0]["status"], "drift");
    }
}
