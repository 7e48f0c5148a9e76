//! The bucket policy's Palisade statements (TLS only, no other encryption) and how they are
//! merged into a policy that may hold statements of its own.

use serde_json::{Map, Value, json};

use super::spec::BucketSpec;
use crate::options::Encryption;

/// Denies every request made without TLS.
pub(crate) const TLS_SID: &str = "PalisadeDenyInsecureTransport";
/// Denies uploads asking for another server-side encryption than the bucket's.
pub(crate) const ENCRYPTION_SID: &str = "PalisadeDenyOtherEncryption";
/// Denies uploads naming another KMS key than the bucket's.
pub(crate) const KMS_KEY_SID: &str = "PalisadeDenyOtherKmsKey";
/// Denies uploads asking for SSE-KMS without naming a key (S3 would use `aws/s3`).
pub(crate) const KMS_DEFAULT_KEY_SID: &str = "PalisadeDenyKmsWithoutKey";

/// One Palisade statement: what it should be, or `None` when it should not be there.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub sid: &'static str,
    pub statement: Option<Value>,
    pub description: String,
}

/// Every statement Palisade manages, wanted or not, so that a protection turned off in the
/// spec is also taken out of the policy.
pub(crate) fn wanted(spec: &BucketSpec, bucket: &str) -> Vec<Wanted> {
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let objects_arn = format!("{bucket_arn}/*");
    let tls = json!({
        "Sid": TLS_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, objects_arn],
        "Condition": { "Bool": { "aws:SecureTransport": "false" } },
    });
    // UploadPart carries no x-amz-server-side-encryption header (the encryption is chosen by
    // CreateMultipartUpload), so denying uploads *without* the header would break every
    // multipart upload. The statements deny only a header that is present with another value
    // (the `IfExists` operators); requests without one get the bucket's default encryption,
    // which `setup` applies first. See docs/s3-buckets.md.
    let encryption = json!({
        "Sid": ENCRYPTION_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": objects_arn,
        "Condition": { "StringNotEqualsIfExists": {
            "s3:x-amz-server-side-encryption": spec.encryption.as_str(),
        } },
    });
    let kms_key = spec.kms_key_id.as_ref().map(|key| {
        json!({
            "Sid": KMS_KEY_SID,
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:PutObject",
            "Resource": objects_arn,
            "Condition": { "StringNotEqualsIfExists": {
                "s3:x-amz-server-side-encryption-aws-kms-key-id": key,
            } },
        })
    });
    // A request that asks for aws:kms without naming a key gets the account's AWS managed key
    // rather than the bucket's, so that is denied too; a request without either header still
    // gets the bucket's default.
    let kms_default_key = json!({
        "Sid": KMS_DEFAULT_KEY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": objects_arn,
        "Condition": {
            "StringEquals": { "s3:x-amz-server-side-encryption": "aws:kms" },
            "Null": { "s3:x-amz-server-side-encryption-aws-kms-key-id": "true" },
        },
    });
    let kms = spec.encryption == Encryption::Kms;
    vec![
        Wanted {
            sid: TLS_SID,
            statement: spec.require_tls.then_some(tls),
            description: "deny requests without TLS".into(),
        },
        Wanted {
            sid: ENCRYPTION_SID,
            statement: spec.require_encryption.then_some(encryption),
            description: format!(
                "deny uploads asking for other encryption than {}",
                spec.encryption.as_str()
            ),
        },
        Wanted {
            sid: KMS_KEY_SID,
            statement: kms_key.filter(|_| kms && spec.require_encryption),
            description: format!(
                "deny uploads naming another KMS key than {}",
                spec.kms_key_id.as_deref().unwrap_or_default()
            ),
        },
        Wanted {
            sid: KMS_DEFAULT_KEY_SID,
            statement: (kms && spec.require_encryption).then_some(kms_default_key),
            description: "deny SSE-KMS uploads that name no key".into(),
        },
    ]
}

/// The statements of a policy document, or why it is not one.
pub(crate) fn statements(policy: &Value) -> Result<Vec<Value>, String> {
    let object = policy
        .as_object()
        .ok_or("the policy is not a JSON object")?;
    match object.get("Statement") {
        None => Ok(Vec::new()),
        Some(Value::Array(list)) => Ok(list.clone()),
        Some(single @ Value::Object(_)) => Ok(vec![single.clone()]),
        Some(_) => Err("`Statement` is neither a list nor an object".into()),
    }
}

/// The statement with `sid`, if the policy has one.
pub(crate) fn find<'a>(statements: &'a [Value], sid: &str) -> Option<&'a Value> {
    statements
        .iter()
        .find(|s| s.get("Sid").and_then(Value::as_str) == Some(sid))
}

/// Whether two statements mean the same, however S3 or a person spelled them: a single string
/// equals a list holding only it, list order does not matter, `"*"` equals `{"AWS": "*"}`.
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    normalise(a, false) == normalise(b, false)
}

fn normalise(value: &Value, in_list_field: bool) -> Value {
    match value {
        Value::Object(map) => {
            let anyone = Value::String("*".into());
            let normalised: Map<String, Value> = map
                .iter()
                .map(|(key, value)| {
                    let value = if key == "Principal" && is_anyone(value) {
                        &anyone
                    } else {
                        value
                    };
                    let list_field = in_list_field || LIST_FIELDS.contains(&key.as_str());
                    (key.clone(), normalise(value, list_field))
                })
                .collect();
            Value::Object(normalised)
        }
        _ if in_list_field => {
            let items = match value {
                Value::Array(items) => items.clone(),
                single => vec![single.clone()],
            };
            let mut texts: Vec<String> = items.iter().map(text_of).collect();
            texts.sort();
            texts.dedup();
            Value::Array(texts.into_iter().map(Value::String).collect())
        }
        other => other.clone(),
    }
}

/// Fields whose values IAM treats as sets of strings.
const LIST_FIELDS: &[&str] = &[
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
    "Principal",
    "NotPrincipal",
];

fn is_anyone(principal: &Value) -> bool {
    let aws = principal.get("AWS");
    principal.as_object().is_some_and(|map| map.len() == 1)
        && (aws == Some(&json!("*")) || aws == Some(&json!(["*"])))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The policy with Palisade's statements as wanted and every other statement kept in place;
/// `None` when nothing would be left (the policy is then deleted).
pub(crate) fn merged(current: Option<&Value>, wanted: &[Wanted]) -> Option<Value> {
    let mut statements = current
        .and_then(|policy| statements(policy).ok())
        .unwrap_or_default();
    for want in wanted {
        let at = statements
            .iter()
            .position(|s| s.get("Sid").and_then(Value::as_str) == Some(want.sid));
        match (at, &want.statement) {
            (Some(at), Some(statement)) => statements[at] = statement.clone(),
            (None, Some(statement)) => statements.push(statement.clone()),
            (Some(at), None) => {
                statements.remove(at);
            }
            (None, None) => {}
        }
    }
    if statements.is_empty() {
        return None;
    }
    let mut policy = current
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    policy
        .entry("Version")
        .or_insert_with(|| json!("2012-10-17"));
    policy.insert("Statement".into(), Value::Array(statements));
    Some(Value::Object(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn foreign() -> Value {
        json!({
            "Sid": "AuditorsRead",
            "Effect": "Allow",
            "Principal": { "AWS": "arn:aws:iam::123456789012:role/auditor" },
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::b/*",
        })
    }

    #[test]
    fn spelling_differences_are_the_same_statement() {
        let written = json!({ "Sid": "X", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": { "Bool": { "aws:SecureTransport": "false" } } });
        let returned = json!({ "Sid": "X", "Principal": { "AWS": ["*"] }, "Action": ["s3:*"],
            "Resource": ["arn:aws:s3:::b/*", "arn:aws:s3:::b"],
            "Condition": { "Bool": { "aws:SecureTransport": ["false"] } } });
        assert!(same(&written, &returned));
        let other = json!({ "Sid": "X", "Principal": "*", "Action": "s3:GetObject",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": { "Bool": { "aws:SecureTransport": "false" } } });
        assert!(!same(&written, &other));
    }

    #[test]
    fn merge_keeps_foreign_statements_and_replaces_ours() {
        let spec = BucketSpec::default();
        let wanted = wanted(&spec, "b");
        let stale = json!({ "Sid": TLS_SID, "Effect": "Deny", "Principal": "*",
            "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*" });
        let current = json!({ "Version": "2012-10-17", "Id": "mine",
            "Statement": [stale, foreign()] });
        let merged = merged(Some(&current), &wanted).unwrap();
        assert_eq!(merged["Id"], "mine");
        let list = statements(&merged).unwrap();
        assert_eq!(list.len(), 3);
        assert!(same(&list[0], wanted[0].statement.as_ref().unwrap()));
        assert_eq!(list[1], foreign());
        assert_eq!(list[2]["Sid"], ENCRYPTION_SID);
    }

    #[test]
    fn turning_protections_off_removes_only_ours() {
        let off = BucketSpec {
            require_tls: false,
            require_encryption: false,
            ..BucketSpec::default()
        };
        let on = merged(None, &wanted(&BucketSpec::default(), "b")).unwrap();
        assert_eq!(merged(Some(&on), &wanted(&off, "b")), None);
        let mixed = json!({ "Statement": foreign() });
        let kept = merged(Some(&mixed), &wanted(&off, "b")).unwrap();
        assert_eq!(statements(&kept).unwrap(), [foreign()]);
        assert_eq!(kept["Version"], "2012-10-17");
    }

    #[test]
    fn kms_adds_a_key_statement() {
        let spec = BucketSpec {
            encryption: Encryption::Kms,
            kms_key_id: Some("arn:aws:kms:eu-west-1:1:key/k".into()),
            ..BucketSpec::default()
        };
        let wanted = wanted(&spec, "b");
        let key = wanted[2].statement.as_ref().unwrap();
        assert_eq!(
            key["Condition"]["StringNotEqualsIfExists"]["s3:x-amz-server-side-encryption-aws-kms-key-id"],
            "arn:aws:kms:eu-west-1:1:key/k"
        );
        let no_key = wanted[3].statement.as_ref().unwrap();
        assert_eq!(
            no_key["Condition"]["Null"]["s3:x-amz-server-side-encryption-aws-kms-key-id"],
            "true"
        );
        let encryption = wanted[1].statement.as_ref().unwrap();
        assert_eq!(
            encryption["Condition"]["StringNotEqualsIfExists"]["s3:x-amz-server-side-encryption"],
            "aws:kms"
        );
        assert!(wanted.iter().all(|w| w.sid.starts_with("Palisade")));
    }
}
