//! `palisade bucket setup | check | policy`: the repository's S3 bucket, set up the safe way
//! and audited against the `[bucket]` section.

use anyhow::{Context, Result, bail};
use palisade_backup::{Location, S3Repository};
use palisade_s3::{BucketSpec, Role, S3Backend, Status};

use crate::{Outcome, commands::print_json};

/// The S3 repository the command is about, or an error saying how to name one.
fn s3_repository(location: Location) -> Result<S3Repository> {
    match location {
        Location::S3(s3) => Ok(*s3),
        Location::Local(path) => bail!(
            "`{}` is a local repository; bucket commands need an S3 one (pass --repo s3:https://HOST/BUCKET/PREFIX or set [repository] location)",
            path.display()
        ),
    }
}

/// The S3 repository and a backend for it, once the spec is known to be valid.
fn connect(location: Location, spec: &BucketSpec) -> Result<(S3Repository, S3Backend)> {
    let repo = s3_repository(location)?;
    spec.validate()?;
    let backend = S3Backend::new(&repo.location, &repo.options)?;
    Ok((repo, backend))
}

/// Creates or adopts the bucket and applies the spec; says what changed, or that nothing did.
pub fn setup(location: Location, spec: &BucketSpec, json: bool, quiet: bool) -> Result<Outcome> {
    let (repo, backend) = connect(location, spec)?;
    let report = backend
        .run(palisade_s3::setup(backend.client(), spec))
        .with_context(|| format!("setting up bucket `{}`", repo.location.bucket))?;
    if json {
        print_json(&report)?;
    } else if !quiet {
        let bucket = &repo.location.bucket;
        if report.created {
            println!("created bucket {bucket}");
        }
        for change in &report.changes {
            println!(
                "set {}: {} -> {}",
                change.setting, change.before, change.after
            );
        }
        for warning in &report.warnings {
            println!("note: {warning}");
        }
        if report.changed() {
            println!(
                "bucket {bucket} is set up ({} setting(s) written, {} already right)",
                report.changes.len(),
                report.unchanged.len()
            );
        } else {
            println!(
                "bucket {bucket} already matches [bucket]: nothing changed ({} setting(s) checked)",
                report.unchanged.len()
            );
        }
    }
    Ok(Outcome::Done)
}

/// Reports each setting as ok, drift or missing; any drift fails the command.
pub fn check(location: Location, spec: &BucketSpec, json: bool, quiet: bool) -> Result<Outcome> {
    let (repo, backend) = connect(location, spec)?;
    let report = backend
        .run(palisade_s3::check(backend.client(), spec))
        .with_context(|| format!("checking bucket `{}`", repo.location.bucket))?;
    if json {
        print_json(&report)?;
    } else {
        for item in &report.items {
            if quiet && item.status == Status::Ok {
                continue;
            }
            let status = match item.status {
                Status::Ok => "ok",
                Status::Drift => "DRIFT",
                Status::Missing => "MISSING",
            };
            if item.status == Status::Ok {
                println!("{status:<8} {}: {}", item.setting, item.actual);
            } else {
                println!(
                    "{status:<8} {}: expected {}, found {}",
                    item.setting, item.expected, item.actual
                );
            }
        }
        if report.has_drift() {
            eprintln!(
                "palisade: bucket {} differs from [bucket]; `palisade bucket setup` applies the settings again",
                repo.location.bucket
            );
        } else if !quiet {
            println!("bucket {} matches [bucket]", repo.location.bucket);
        }
    }
    Ok(if report.has_drift() {
        Outcome::Failed
    } else {
        Outcome::Done
    })
}

/// Prints the IAM policy JSON for `role` on the repository's bucket and prefix.
pub fn policy(location: Location, role: &str) -> Result<Outcome> {
    let repo = s3_repository(location)?;
    let role: Role = role.parse()?;
    print_json(&palisade_s3::policy(role, &repo.location))?;
    Ok(Outcome::Done)
}
