//! Palisade's lifecycle rules on the repository prefix, how they are described and compared, and
//! how they are merged with rules of other owners.

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
    NoncurrentVersionExpiration, Transition, TransitionStorageClass,
};

use super::spec::LifecycleSpec;
use crate::location::S3Location;

/// Moves data packs to a cheaper storage class.
const TRANSITION: &str = "palisade-transition";
/// Deletes versions some days after they stopped being current.
const NONCURRENT: &str = "palisade-expire-noncurrent";
/// Aborts abandoned multipart uploads.
const ABORT: &str = "palisade-abort-multipart";

/// One Palisade rule: what it should be, or `None` when it should not be there.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub id: String,
    pub rule: Option<LifecycleRule>,
}

/// A rule's ID for this location: the kind, then the prefix when there is one, so that
/// repositories under different prefixes of one bucket keep rules of their own.
fn rule_id(kind: &str, location: &S3Location) -> String {
    if location.prefix.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}:{}", location.prefix)
    }
}

/// The key prefix the rules apply to: the repository's folder, or the whole bucket.
fn filter_prefix(location: &S3Location) -> String {
    if location.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", location.prefix)
    }
}

/// Every rule Palisade manages for this location, wanted or not.
pub(crate) fn wanted(spec: &LifecycleSpec, location: &S3Location) -> Vec<Wanted> {
    let prefix = filter_prefix(location);
    // Only data packs move: config, keys, index and snapshots must stay readable at once, or
    // no repository operation could even start after the transition.
    let transition = spec.transition_days.map(|days| {
        let class = TransitionStorageClass::from(spec.transition_storage_class.as_str());
        let transition = Transition::builder()
            .days(days_i32(days))
            .storage_class(class);
        rule(
            &rule_id(TRANSITION, location),
            &format!("{prefix}data/"),
            LifecycleRule::builder().transitions(transition.build()),
        )
    });
    let noncurrent = spec.noncurrent_expire_days.map(|days| {
        let expiration = NoncurrentVersionExpiration::builder().noncurrent_days(days_i32(days));
        rule(
            &rule_id(NONCURRENT, location),
            &prefix,
            LifecycleRule::builder().noncurrent_version_expiration(expiration.build()),
        )
    });
    let abort = AbortIncompleteMultipartUpload::builder()
        .days_after_initiation(days_i32(spec.abort_multipart_days))
        .build();
    let abort = rule(
        &rule_id(ABORT, location),
        &prefix,
        LifecycleRule::builder().abort_incomplete_multipart_upload(abort),
    );
    vec![
        Wanted {
            id: rule_id(TRANSITION, location),
            rule: transition,
        },
        Wanted {
            id: rule_id(NONCURRENT, location),
            rule: noncurrent,
        },
        Wanted {
            id: rule_id(ABORT, location),
            rule: Some(abort),
        },
    ]
}

fn rule(
    id: &str,
    prefix: &str,
    builder: aws_sdk_s3::types::builders::LifecycleRuleBuilder,
) -> LifecycleRule {
    builder
        .id(id)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .status(ExpirationStatus::Enabled)
        .build()
        .expect("a lifecycle rule with a status always builds")
}

fn days_i32(days: u32) -> i32 {
    i32::try_from(days).unwrap_or(i32::MAX)
}

/// The rule with `id`, if there is one.
pub(crate) fn find<'a>(rules: &'a [LifecycleRule], id: &str) -> Option<&'a LifecycleRule> {
    rules.iter().find(|rule| rule.id() == Some(id))
}

/// The current rules with Palisade's as wanted and every other rule kept in place.
pub(crate) fn merged(current: &[LifecycleRule], wanted: &[Wanted]) -> Vec<LifecycleRule> {
    let mut rules = current.to_vec();
    for want in wanted {
        let at = rules
            .iter()
            .position(|rule| rule.id() == Some(want.id.as_str()));
        match (at, &want.rule) {
            (Some(at), Some(rule)) => rules[at] = rule.clone(),
            (None, Some(rule)) => rules.push(rule.clone()),
            (Some(at), None) => {
                rules.remove(at);
            }
            (None, None) => {}
        }
    }
    rules
}

/// Everything about a rule that decides what it does, in a form that compares equal however
/// the service spelled it (a missing prefix and an empty one, `Years = 0`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    enabled: bool,
    prefix: String,
    other_filters: bool,
    expiration: bool,
    transitions: Vec<(Option<i32>, String)>,
    noncurrent_transitions: bool,
    noncurrent_days: Option<i32>,
    newer_noncurrent_versions: Option<i32>,
    abort_days: Option<i32>,
}

impl Shape {
    fn of(rule: &LifecycleRule) -> Self {
        let filter = rule.filter();
        #[allow(deprecated)] // rules written before filters existed carry a bare prefix
        let legacy_prefix = rule.prefix();
        let prefix = filter
            .and_then(LifecycleRuleFilter::prefix)
            .or(legacy_prefix);
        let other_filters = filter.is_some_and(|f| {
            f.tag().is_some()
                || f.and().is_some()
                || f.object_size_greater_than().is_some()
                || f.object_size_less_than().is_some()
        });
        let noncurrent = rule.noncurrent_version_expiration();
        Self {
            enabled: rule.status() == &ExpirationStatus::Enabled,
            prefix: prefix.unwrap_or_default().to_string(),
            other_filters,
            expiration: rule.expiration().is_some(),
            transitions: rule
                .transitions()
                .iter()
                .map(|t| {
                    let class = t.storage_class().map(|c| c.as_str().to_string());
                    (t.days(), class.unwrap_or_default())
                })
                .collect(),
            noncurrent_transitions: !rule.noncurrent_version_transitions().is_empty(),
            noncurrent_days: noncurrent.and_then(NoncurrentVersionExpiration::noncurrent_days),
            newer_noncurrent_versions: noncurrent
                .and_then(NoncurrentVersionExpiration::newer_noncurrent_versions)
                .filter(|n| *n != 0),
            abort_days: rule
                .abort_incomplete_multipart_upload()
                .and_then(AbortIncompleteMultipartUpload::days_after_initiation),
        }
    }

    fn describe(&self) -> String {
        let mut actions = Vec::new();
        for (days, class) in &self.transitions {
            actions.push(format!("move to {class} after {}", days_text(*days)));
        }
        if let Some(days) = self.noncurrent_days {
            actions.push(format!(
                "expire noncurrent versions after {}",
                days_text(Some(days))
            ));
        }
        if let Some(newer) = self.newer_noncurrent_versions {
            actions.push(format!("keeping the newest {newer}"));
        }
        if let Some(days) = self.abort_days {
            actions.push(format!(
                "abort incomplete uploads after {}",
                days_text(Some(days))
            ));
        }
        if self.expiration {
            actions.push("expire current versions".into());
        }
        if self.noncurrent_transitions {
            actions.push("move noncurrent versions".into());
        }
        let scope = if self.prefix.is_empty() {
            "the whole bucket".to_string()
        } else {
            format!("`{}`", self.prefix)
        };
        let mut text = format!("on {scope}");
        if self.other_filters {
            text.push_str(" (with more filters)");
        }
        text.push_str(": ");
        text.push_str(&actions.join(", "));
        if !self.enabled {
            text.push_str(" (disabled)");
        }
        text
    }
}

fn days_text(days: Option<i32>) -> String {
    match days {
        Some(1) => "1 day".into(),
        Some(days) => format!("{days} days"),
        None => "a date".into(),
    }
}

/// A rule in words.
pub(crate) fn describe(rule: &LifecycleRule) -> String {
    Shape::of(rule).describe()
}

/// Whether two rules do the same.
pub(crate) fn same(a: &LifecycleRule, b: &LifecycleRule) -> bool {
    Shape::of(a) == Shape::of(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(text: &str) -> S3Location {
        S3Location::parse(text).unwrap()
    }

    fn foreign() -> LifecycleRule {
        LifecycleRule::builder()
            .id("logs")
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap()
    }

    #[test]
    fn rules_are_scoped_to_the_prefix() {
        let spec = LifecycleSpec {
            transition_days: Some(30),
            noncurrent_expire_days: Some(90),
            ..LifecycleSpec::default()
        };
        let wanted = wanted(&spec, &location("s3:bucket/app/prod"));
        let ids: Vec<&str> = wanted.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "palisade-transition:app/prod",
                "palisade-expire-noncurrent:app/prod",
                "palisade-abort-multipart:app/prod"
            ]
        );
        let described: Vec<String> = wanted
            .iter()
            .map(|w| describe(w.rule.as_ref().unwrap()))
            .collect();
        assert_eq!(
            described[0],
            "on `app/prod/data/`: move to STANDARD_IA after 30 days"
        );
        assert_eq!(
            described[1],
            "on `app/prod/`: expire noncurrent versions after 90 days"
        );
        assert_eq!(
            described[2],
            "on `app/prod/`: abort incomplete uploads after 1 day"
        );

        let whole = super::wanted(&LifecycleSpec::default(), &location("s3:bucket"));
        assert_eq!(whole[2].id, "palisade-abort-multipart");
        assert!(describe(whole[2].rule.as_ref().unwrap()).starts_with("on the whole bucket"));
        assert!(whole[0].rule.is_none() && whole[1].rule.is_none());
    }

    #[test]
    fn merge_keeps_foreign_rules_and_drops_unwanted_ones() {
        let loc = location("s3:bucket/app");
        let on = LifecycleSpec {
            noncurrent_expire_days: Some(30),
            ..LifecycleSpec::default()
        };
        let first = merged(&[foreign()], &wanted(&on, &loc));
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], foreign());
        let off = merged(&first, &wanted(&LifecycleSpec::default(), &loc));
        let ids: Vec<_> = off.iter().map(|r| r.id().unwrap()).collect();
        assert_eq!(ids, ["logs", "palisade-abort-multipart:app"]);
    }

    #[test]
    fn missing_and_empty_prefixes_compare_equal() {
        let bare = LifecycleRule::builder()
            .id("x")
            .filter(LifecycleRuleFilter::builder().build())
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        let empty = LifecycleRule::builder()
            .id("x")
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .status(ExpirationStatus::Enabled)
            .build()
            .unwrap();
        assert!(same(&bare, &empty));
        assert!(!same(&bare, &foreign()));
    }
}
