//! Each setting `setup` manages, as the spec wants it and as the bucket has it, described in the
//! same words so that `setup` and `check` agree on what differs.

use aws_sdk_s3::types::{
    BucketVersioningStatus, DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockRetentionMode, ObjectLockRule, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionRule,
};

use super::report::{ABSENT, Comparison};
use super::spec::{BucketSpec, ObjectLockSpec};
use super::state::BucketState;
use super::{lifecycle, statements};
use crate::location::S3Location;
use crate::options::Encryption;

/// The comparisons of every managed setting, grouped by the request that writes them.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub encryption: Comparison,
    pub versioning: Option<Comparison>,
    pub public_access: Option<Comparison>,
    pub lifecycle: Vec<Comparison>,
    pub lifecycle_rules: Vec<lifecycle::Wanted>,
    pub object_lock: Option<Comparison>,
    pub policy: Vec<Comparison>,
    pub policy_statements: Vec<statements::Wanted>,
}

impl Plan {
    pub fn new(spec: &BucketSpec, location: &S3Location, state: &BucketState) -> Self {
        let lifecycle_rules = lifecycle::wanted(&spec.lifecycle, location);
        let policy_statements = statements::wanted(spec, &location.bucket);
        Self {
            encryption: encryption(spec, state),
            versioning: spec.versioning.then(|| versioning(state)),
            public_access: spec.block_public_access.then(|| public_access(state)),
            lifecycle: lifecycle_comparisons(&lifecycle_rules, state),
            lifecycle_rules,
            object_lock: spec.object_lock.map(|lock| object_lock(&lock, state)),
            policy: policy_comparisons(&policy_statements, state),
            policy_statements,
        }
    }

    /// Every comparison, in the order `setup` writes them.
    pub fn all(self) -> Vec<Comparison> {
        let mut all = vec![self.encryption];
        all.extend(self.versioning);
        all.extend(self.public_access);
        all.extend(self.lifecycle);
        all.extend(self.object_lock);
        all.extend(self.policy);
        all
    }
}

/// The default encryption rule the spec asks for.
pub(crate) fn encryption_rule(spec: &BucketSpec) -> ServerSideEncryptionRule {
    let algorithm = ServerSideEncryption::from(spec.encryption.as_str());
    let mut default = ServerSideEncryptionByDefault::builder().sse_algorithm(algorithm);
    let mut rule = ServerSideEncryptionRule::builder();
    if spec.encryption == Encryption::Kms {
        default = default.set_kms_master_key_id(spec.kms_key_id.clone());
        rule = rule.bucket_key_enabled(true);
    }
    let default = default.build().expect("the algorithm is always set");
    rule.apply_server_side_encryption_by_default(default)
        .build()
}

fn encryption(spec: &BucketSpec, state: &BucketState) -> Comparison {
    let expected = describe_encryption(&encryption_rule(spec));
    let actual = state.encryption.as_ref().map(describe_encryption);
    Comparison::of("encryption", expected, actual)
}

fn describe_encryption(rule: &ServerSideEncryptionRule) -> String {
    let Some(default) = rule.apply_server_side_encryption_by_default() else {
        return "a rule without default encryption".into();
    };
    match default.sse_algorithm() {
        ServerSideEncryption::Aes256 => "AES256".into(),
        algorithm => format!(
            "{} with key {}, bucket key {}",
            algorithm.as_str(),
            default.kms_master_key_id().unwrap_or("aws/s3"),
            if rule.bucket_key_enabled() == Some(true) {
                "on"
            } else {
                "off"
            }
        ),
    }
}

fn versioning(state: &BucketState) -> Comparison {
    let actual = state.versioning.as_ref().map(|s| s.as_str().to_string());
    let expected = BucketVersioningStatus::Enabled.as_str().to_string();
    Comparison::of("versioning", expected, actual)
}

/// All four public access blocks on.
pub(crate) fn public_access_block() -> PublicAccessBlockConfiguration {
    PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build()
}

fn public_access(state: &BucketState) -> Comparison {
    let expected = describe_public_access(&public_access_block());
    let actual = state.public_access.as_ref().map(describe_public_access);
    Comparison::of("public access block", expected, actual)
}

fn describe_public_access(config: &PublicAccessBlockConfiguration) -> String {
    let flags = [
        ("BlockPublicAcls", config.block_public_acls()),
        ("IgnorePublicAcls", config.ignore_public_acls()),
        ("BlockPublicPolicy", config.block_public_policy()),
        ("RestrictPublicBuckets", config.restrict_public_buckets()),
    ];
    let off: Vec<&str> = flags
        .iter()
        .filter(|(_, on)| *on != Some(true))
        .map(|(name, _)| *name)
        .collect();
    if off.is_empty() {
        "all four blocks on".into()
    } else {
        format!("off: {}", off.join(", "))
    }
}

fn lifecycle_comparisons(wanted: &[lifecycle::Wanted], state: &BucketState) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for want in wanted {
        let current = lifecycle::find(&state.lifecycle, &want.id);
        let setting = format!("lifecycle rule {}", want.id);
        let comparison = match (&want.rule, current) {
            (None, None) => continue,
            (Some(rule), Some(current)) if lifecycle::same(rule, current) => {
                let text = lifecycle::describe(rule);
                Comparison::of(setting, text.clone(), Some(text))
            }
            (Some(rule), current) => Comparison::of(
                setting,
                lifecycle::describe(rule),
                current.map(lifecycle::describe),
            ),
            (None, Some(current)) => {
                Comparison::of(setting, ABSENT.into(), Some(lifecycle::describe(current)))
            }
        };
        comparisons.push(comparison);
    }
    comparisons
}

/// The object lock configuration the spec asks for.
pub(crate) fn object_lock_configuration(lock: &ObjectLockSpec) -> ObjectLockConfiguration {
    let days = i32::try_from(lock.days).unwrap_or(i32::MAX);
    let retention = DefaultRetention::builder()
        .mode(ObjectLockRetentionMode::from(lock.mode.as_str()))
        .days(days)
        .build();
    ObjectLockConfiguration::builder()
        .object_lock_enabled(ObjectLockEnabled::Enabled)
        .rule(
            ObjectLockRule::builder()
                .default_retention(retention)
                .build(),
        )
        .build()
}

fn object_lock(lock: &ObjectLockSpec, state: &BucketState) -> Comparison {
    let expected = describe_object_lock(Some(&object_lock_configuration(lock)));
    let actual = describe_object_lock(state.object_lock.as_ref());
    let expected = expected.expect("the wanted configuration is enabled");
    Comparison::of("object lock", expected, actual)
}

/// Whether the bucket has object lock at all (it may still lack a default retention).
pub(crate) fn object_lock_enabled(state: &BucketState) -> bool {
    state
        .object_lock
        .as_ref()
        .and_then(ObjectLockConfiguration::object_lock_enabled)
        == Some(&ObjectLockEnabled::Enabled)
}

fn describe_object_lock(config: Option<&ObjectLockConfiguration>) -> Option<String> {
    let config = config.filter(|c| c.object_lock_enabled() == Some(&ObjectLockEnabled::Enabled))?;
    let Some(retention) = config.rule().and_then(ObjectLockRule::default_retention) else {
        return Some("enabled, no default retention".into());
    };
    let mode = retention.mode().map_or("no mode", |m| m.as_str());
    // Services that know only one of the two fields may send the other as 0.
    let period = match (
        retention.days().filter(|d| *d != 0),
        retention.years().filter(|y| *y != 0),
    ) {
        (Some(1), None) => "1 day".to_string(),
        (Some(days), None) => format!("{days} days"),
        (None, Some(1)) => "1 year".to_string(),
        (None, Some(years)) => format!("{years} years"),
        _ => "no period".to_string(),
    };
    Some(format!("{mode} for {period}"))
}

fn policy_comparisons(wanted: &[statements::Wanted], state: &BucketState) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for want in wanted {
        let current = statements::find(&state.statements, want.sid);
        let setting = format!("policy statement {}", want.sid);
        let comparison = match (&want.statement, current) {
            (None, None) => continue,
            (Some(statement), Some(current)) if statements::same(statement, current) => {
                Comparison::of(
                    setting,
                    want.description.clone(),
                    Some(want.description.clone()),
                )
            }
            (Some(_), current) => Comparison::of(
                setting,
                want.description.clone(),
                current.map(ToString::to_string),
            ),
            (None, Some(current)) => {
                Comparison::of(setting, ABSENT.into(), Some(current.to_string()))
            }
        };
        comparisons.push(comparison);
    }
    comparisons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::report::Status;
    use crate::bucket::spec::LockMode;

    fn location() -> S3Location {
        S3Location::parse("s3:bucket/app").unwrap()
    }

    #[test]
    fn an_empty_bucket_misses_everything() {
        let spec = BucketSpec {
            object_lock: Some(ObjectLockSpec {
                mode: LockMode::Governance,
                days: 3,
            }),
            ..BucketSpec::default()
        };
        let all = Plan::new(&spec, &location(), &BucketState::default()).all();
        assert!(all.iter().all(|c| c.status == Status::Missing), "{all:#?}");
        let settings: Vec<&str> = all.iter().map(|c| c.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "encryption",
                "versioning",
                "public access block",
                "lifecycle rule palisade-abort-multipart:app",
                "object lock",
                "policy statement PalisadeDenyInsecureTransport",
                "policy statement PalisadeDenyOtherEncryption",
            ]
        );
        assert_eq!(all[4].expected, "GOVERNANCE for 3 days");
    }

    #[test]
    fn the_wanted_state_compares_ok() {
        let spec = BucketSpec {
            encryption: Encryption::Kms,
            kms_key_id: Some("key-1".into()),
            ..BucketSpec::default()
        };
        let wanted_policy = statements::merged(None, &statements::wanted(&spec, "bucket"));
        let state = BucketState {
            encryption: Some(encryption_rule(&spec)),
            versioning: Some(BucketVersioningStatus::Enabled),
            public_access: Some(public_access_block()),
            statements: statements::statements(wanted_policy.as_ref().unwrap()).unwrap(),
            policy: wanted_policy,
            lifecycle: lifecycle::wanted(&spec.lifecycle, &location())
                .into_iter()
                .filter_map(|w| w.rule)
                .collect(),
            ..BucketState::default()
        };
        let all = Plan::new(&spec, &location(), &state).all();
        assert!(all.iter().all(|c| c.status == Status::Ok), "{all:#?}");
        assert_eq!(all[0].expected, "aws:kms with key key-1, bucket key on");
        assert_eq!(all.len(), 8);

        let suspended = BucketState {
            versioning: Some(BucketVersioningStatus::Suspended),
            public_access: Some(PublicAccessBlockConfiguration::builder().build()),
            ..state
        };
        let plan = Plan::new(&spec, &location(), &suspended);
        let versioning = plan.versioning.unwrap();
        assert_eq!(
            (versioning.status, versioning.actual.as_str()),
            (Status::Drift, "Suspended")
        );
        let public = plan.public_access.unwrap();
        assert!(
            public.actual.starts_with("off: BlockPublicAcls"),
            "{public:?}"
        );
    }
}
