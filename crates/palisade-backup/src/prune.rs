//! `prune`: rustic_core's two-phase prune, with every pack object lock still holds kept out.
//!
//! Unused packs are marked first and deleted by a later prune.
//! rustic_core decides pack by pack but takes no list of packs to keep; what it does take is an
//! age: packs written less than `keep_pack` ago are neither repacked nor marked, and packs
//! marked less than `keep_delete` ago are not deleted. So the packs rustic could touch are asked
//! for their lock oldest first, and the first locked one sets the age: it and every younger
//! pack stay. `docs/retention.md` gives the reasoning and its cost.

use std::collections::BTreeMap;

use palisade_s3::ObjectLock;
use rustic_core::{
    FileType, Id, OpenStatus, PruneOptions, PrunePlan, Repository,
    jiff::{SignedDuration, Span, Timestamp},
    repofile::{IndexFile, SnapshotId},
};
use serde::Serialize;

use crate::{Error, Repo, Result};

/// How long a pack marked for deletion waits before a later prune deletes it: longer than any
/// backup runs, so that a backup that started before the mark and reuses the pack's data is
/// finished (and its snapshot seen) before the pack goes. rustic_core's default.
pub const KEEP_DELETE: SignedDuration = SignedDuration::from_hours(23);

/// What `prune` is asked to do.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// Plan and report only.
    pub dry_run: bool,
    /// How long marked packs wait before they are deleted ([`KEEP_DELETE`] unless a person
    /// insists on less).
    pub keep_delete: SignedDuration,
    /// In a dry run, snapshots to plan as if they were gone (those a dry run of `forget` would
    /// remove, by full id). Ignored unless `dry_run`: a real prune only goes by what exists.
    pub forgotten: Vec<String>,
}

impl Default for PruneRequest {
    fn default() -> Self {
        Self {
            dry_run: false,
            keep_delete: KEEP_DELETE,
            forgotten: Vec::new(),
        }
    }
}

/// What `prune` did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Packs deleted: marked by an earlier prune at least `keep_delete` ago, still unused.
    pub packs_deleted: u64,
    /// Their size in bytes.
    pub bytes_deleted: u64,
    /// Packs no snapshot needs, marked by this prune; a later one deletes them.
    pub packs_marked: u64,
    /// Bytes of unused data in them.
    pub bytes_marked: u64,
    /// Partly used packs whose used data is copied into new packs; the old ones are marked.
    pub packs_repacked: u64,
    /// Bytes read to repack them.
    pub bytes_repacked: u64,
    /// Packs marked earlier that wait until `keep_delete` has passed.
    pub packs_waiting: u64,
    /// Marked packs that a snapshot needs again (a backup ran meanwhile), put back in the index.
    pub packs_recovered: u64,
    /// Pack files no index names (a backup still running, or one that was stopped), marked.
    pub packs_unindexed: u64,
    /// How long marked packs wait, as it was applied (object lock may lengthen it).
    pub keep_delete: String,
    /// What object lock kept back, one sentence each; empty without locks.
    pub locked: Vec<String>,
}

/// Removes data no snapshot needs, rustic_core's way: unused packs are marked now and deleted by
/// a prune `keep_delete` later, partly used packs are repacked within rustic's limits (10 % of
/// the repository per run, 5 % unused tolerated), and nothing a snapshot needs is touched. On S3
/// with object lock, no locked pack is repacked, marked or deleted.
pub fn prune(repo: &Repo, request: &PruneRequest) -> Result<PruneReport> {
    let handle = repo.reopen()?;
    let planned = plan(repo, &handle, request)?;
    let report = report(&planned, request);
    if !request.dry_run {
        handle
            .prune(&planned.opts, planned.plan)
            .map_err(|err| Error::repo("pruning", err))?;
    }
    Ok(report)
}

/// rustic's plan, the options it was made with, and what object lock kept out of it.
struct Planned {
    opts: PruneOptions,
    plan: PrunePlan,
    keep_delete: SignedDuration,
    locked: Vec<String>,
}

/// rustic's plan with locked packs kept out. The locks are found before planning, and rustic's
/// plan reads its own clock some time later (after walking every snapshot's trees), so the ages
/// get a margin; a plan that took longer than the margin is made again with a wider one.
fn plan(repo: &Repo, handle: &Repository<OpenStatus>, request: &PruneRequest) -> Result<Planned> {
    let forgotten = forgotten(request)?;
    let mut margin = SignedDuration::from_hours(1);
    for _ in 0..3 {
        let started = Timestamp::now();
        let locked = find_locked(repo, handle, request.keep_delete, margin)?;
        let ages = locked.ages(Timestamp::now(), margin, request.keep_delete);
        let opts = PruneOptions::default()
            .keep_pack(span(ages.keep_pack))
            .keep_delete(span(ages.keep_delete))
            .ignore_snaps(forgotten.clone());
        let plan = handle
            .prune_plan(&opts)
            .map_err(|err| Error::repo("planning the prune", err))?;
        let took = Timestamp::now().duration_since(started);
        if locked.is_empty() || took < margin {
            return Ok(Planned {
                opts,
                plan,
                keep_delete: ages.keep_delete,
                locked: locked.notes(),
            });
        }
        margin = took * 2;
    }
    Err(Error::Repository {
        context: "planning the prune".into(),
        message: "planning took longer each time, so locked packs could not be kept out of the \
                  plan safely; nothing was changed: run prune again"
            .into(),
    })
}

/// The snapshots a dry run plans without; none for a real prune.
fn forgotten(request: &PruneRequest) -> Result<Vec<SnapshotId>> {
    if !request.dry_run {
        return Ok(Vec::new());
    }
    request
        .forgotten
        .iter()
        .map(|id| {
            id.parse::<Id>()
                .map(SnapshotId::from)
                .map_err(|_| Error::NoSuchSnapshot { id: id.clone() })
        })
        .collect()
}

/// The two ages rustic's plan goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ages {
    /// Packs written more recently are neither repacked nor marked.
    keep_pack: SignedDuration,
    /// Packs marked more recently are not deleted.
    keep_delete: SignedDuration,
}

/// Whole seconds as a span (rustic's options are spans).
fn span(duration: SignedDuration) -> Span {
    Span::new().seconds(duration.as_secs())
}

/// A duration rounded up to whole seconds.
fn whole_seconds(duration: SignedDuration) -> SignedDuration {
    let secs = duration.as_secs() + i64::from(duration.subsec_nanos() > 0);
    SignedDuration::from_secs(secs)
}

/// Every pack the index names, with the time rustic goes by: when it was written, or for a pack
/// marked for deletion, when it was marked.
#[derive(Debug, Default)]
struct IndexedPacks {
    unmarked: BTreeMap<Id, Option<Timestamp>>,
    marked: BTreeMap<Id, Option<Timestamp>>,
}

/// One pack under object lock: when it was written (or marked), its id, and the lock.
type LockedPack = (Timestamp, Id, ObjectLock);

/// The oldest locked pack of each kind rustic could touch.
#[derive(Debug, Default)]
struct Locked {
    /// Among written packs (rustic may repack or mark any of them).
    written: Option<LockedPack>,
    /// Among marked packs due for deletion.
    marked: Option<LockedPack>,
}

impl Locked {
    fn is_empty(&self) -> bool {
        self.written.is_none() && self.marked.is_none()
    }

    /// The ages that keep the locked packs and every younger one, seen from `reference`, which
    /// rustic's own clock runs at most `margin` ahead of.
    fn ages(
        &self,
        reference: Timestamp,
        margin: SignedDuration,
        keep_delete: SignedDuration,
    ) -> Ages {
        let since = |time: Timestamp| whole_seconds(reference.duration_since(time) + margin);
        Ages {
            keep_pack: self
                .written
                .map_or(SignedDuration::ZERO, |(time, _, _)| since(time)),
            keep_delete: self
                .marked
                .map_or(keep_delete, |(time, _, _)| since(time).max(keep_delete)),
        }
    }

    /// What the ages keep, one sentence each.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some((time, id, lock)) = self.written {
            notes.push(format!(
                "packs written since {} were left alone: pack {} is under {lock}",
                shown(time),
                id.to_hex().as_str()
            ));
        }
        if let Some((time, id, lock)) = self.marked {
            notes.push(format!(
                "packs marked for deletion since {} stay marked: pack {} is under {lock}",
                shown(time),
                id.to_hex().as_str()
            ));
        }
        notes
    }
}

impl IndexedPacks {
    fn read(handle: &Repository<OpenStatus>) -> Result<Self> {
        let mut packs = Self::default();
        let files = handle
            .stream_files::<IndexFile>()
            .map_err(|err| Error::repo("reading the index", err))?;
        for file in files {
            let (_, index) = file.map_err(|err| Error::repo("reading the index", err))?;
            for (list, into) in [
                (index.packs, &mut packs.unmarked),
                (index.packs_to_delete, &mut packs.marked),
            ] {
                for pack in list {
                    // Listed twice, a pack goes by its oldest time (no time counts as oldest).
                    let time = into.entry(*pack.id).or_insert(pack.time);
                    *time = (*time).min(pack.time);
                }
            }
        }
        // rustic treats a pack that is both indexed and marked as indexed.
        let unmarked = &packs.unmarked;
        packs.marked.retain(|id, _| !unmarked.contains_key(id));
        Ok(packs)
    }

    /// The oldest locked packs at `now`, asking `lock_of` for the locks of a batch of packs.
    /// Only marked packs that rustic could delete (marked `keep_delete` ago, give or take
    /// `margin`) are asked. A locked pack without a time is an error: no age keeps it.
    fn locked(
        &self,
        now: Timestamp,
        keep_delete: SignedDuration,
        margin: SignedDuration,
        mut lock_of: impl FnMut(&[Id]) -> Result<Vec<ObjectLock>>,
    ) -> Result<Locked> {
        let timeless: Vec<Id> = self
            .unmarked
            .iter()
            .filter(|(_, time)| time.is_none())
            .map(|(id, _)| *id)
            .collect();
        if let Some((at, lock)) = first_locked(&timeless, now, &mut lock_of)? {
            return Err(Error::LockedPackWithoutTime {
                pack: timeless[at].to_hex().to_string(),
                lock: lock.to_string(),
                ends: lock.ends(),
            });
        }
        let due = now
            .saturating_sub(keep_delete)
            .and_then(|t| t.saturating_add(margin))
            .unwrap_or(Timestamp::MIN);
        Ok(Locked {
            written: oldest_locked(&oldest_first(&self.unmarked, None), now, &mut lock_of)?,
            marked: oldest_locked(&oldest_first(&self.marked, Some(due)), now, &mut lock_of)?,
        })
    }
}

/// Finds the oldest locked packs, when the repository is on S3 and the bucket locks objects.
fn find_locked(
    repo: &Repo,
    handle: &Repository<OpenStatus>,
    keep_delete: SignedDuration,
    margin: SignedDuration,
) -> Result<Locked> {
    let Some(s3) = repo.backend.s3() else {
        return Ok(Locked::default());
    };
    if !s3.locks_objects()? {
        return Ok(Locked::default());
    }
    let packs = IndexedPacks::read(handle)?;
    packs.locked(Timestamp::now(), keep_delete, margin, |ids| {
        Ok(s3.object_locks(FileType::Pack, ids)?)
    })
}

/// The packs with a time (at or before `until`, if given), oldest first.
fn oldest_first(
    packs: &BTreeMap<Id, Option<Timestamp>>,
    until: Option<Timestamp>,
) -> Vec<(Timestamp, Id)> {
    let mut aged: Vec<(Timestamp, Id)> = packs
        .iter()
        .filter_map(|(id, time)| time.map(|time| (time, *id)))
        .filter(|(time, _)| until.is_none_or(|until| *time <= until))
        .collect();
    aged.sort();
    aged
}

fn oldest_locked(
    aged: &[(Timestamp, Id)],
    now: Timestamp,
    lock_of: &mut impl FnMut(&[Id]) -> Result<Vec<ObjectLock>>,
) -> Result<Option<LockedPack>> {
    let ids: Vec<Id> = aged.iter().map(|(_, id)| *id).collect();
    Ok(first_locked(&ids, now, lock_of)?.map(|(at, lock)| (aged[at].0, aged[at].1, lock)))
}

/// The first of `ids`, in their order, that object lock holds at `now`. Packs are asked in
/// batches that start small and double up to 64: a lock found early costs few requests, and a
/// long run of unlocked packs one round of parallel requests per batch.
fn first_locked(
    ids: &[Id],
    now: Timestamp,
    lock_of: &mut impl FnMut(&[Id]) -> Result<Vec<ObjectLock>>,
) -> Result<Option<(usize, ObjectLock)>> {
    let (mut start, mut batch) = (0, 8);
    while start < ids.len() {
        let chunk = &ids[start..ids.len().min(start + batch)];
        let locks = lock_of(chunk)?;
        if let Some(at) = locks.iter().position(|lock| lock.holds(now)) {
            return Ok(Some((start + at, locks[at])));
        }
        start += chunk.len();
        batch = (batch * 2).min(64);
    }
    Ok(None)
}

fn shown(time: Timestamp) -> String {
    time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn report(planned: &Planned, request: &PruneRequest) -> PruneReport {
    let stats = &planned.plan.stats;
    // The per-decision counts are only in rustic's debug statistics, whose decision type it
    // does not export; its Debug form names the decision.
    let packs_marked = stats
        .debug
        .0
        .iter()
        .filter(|(key, _)| format!("{:?}", key.todo) == "MarkDelete")
        .map(|(_, detail)| detail.packs)
        .sum();
    PruneReport {
        dry_run: request.dry_run,
        packs_deleted: stats.packs_to_delete.remove,
        bytes_deleted: stats.size_to_delete.remove,
        packs_marked,
        bytes_marked: stats.size_sum().remove,
        packs_repacked: stats.packs.repack,
        bytes_repacked: stats.size_sum().repack,
        packs_waiting: stats.packs_to_delete.keep,
        packs_recovered: stats.packs_to_delete.recover,
        packs_unindexed: stats.packs_unref,
        keep_delete: format!("{:#}", planned.keep_delete),
        locked: planned.locked.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: SignedDuration = SignedDuration::from_hours(1);
    const MINUTE: SignedDuration = SignedDuration::from_mins(1);

    fn id(n: u8) -> Id {
        Id::new([n; 32])
    }

    fn ago(now: Timestamp, duration: SignedDuration) -> Option<Timestamp> {
        Some(now - duration)
    }

    /// Locks for the packs in `locked`, none for the others; records every batch asked.
    fn locks<'a>(
        locked: &'a [Id],
        asked: &'a mut Vec<usize>,
    ) -> impl FnMut(&[Id]) -> Result<Vec<ObjectLock>> + 'a {
        move |ids: &[Id]| {
            asked.push(ids.len());
            Ok(ids
                .iter()
                .map(|id| ObjectLock {
                    retain_until: None,
                    legal_hold: locked.contains(id),
                })
                .collect())
        }
    }

    /// rustic's rule: a written pack is left alone when it is younger than `keep_pack`.
    fn left_alone(time: Option<Timestamp>, plan_time: Timestamp, ages: Ages) -> bool {
        time > Some(plan_time - ages.keep_pack)
    }

    /// rustic's rule: a marked pack is deleted when it was marked at least `keep_delete` ago.
    fn deleted(time: Option<Timestamp>, plan_time: Timestamp, ages: Ages) -> bool {
        time.is_some_and(|time| plan_time - ages.keep_delete >= time)
    }

    #[test]
    fn the_oldest_locked_pack_keeps_itself_and_every_younger_one() {
        let now = Timestamp::now();
        let mut packs = IndexedPacks::default();
        packs.unmarked.insert(id(1), ago(now, 5 * HOUR)); // unlocked, older
        packs.unmarked.insert(id(2), ago(now, 3 * HOUR)); // locked
        packs.unmarked.insert(id(3), ago(now, 2 * HOUR)); // unlocked, younger
        let mut asked = Vec::new();
        let found = packs
            .locked(now, KEEP_DELETE, MINUTE, locks(&[id(2)], &mut asked))
            .unwrap();
        assert_eq!(found.written.map(|(_, id, _)| id), Some(id(2)));
        assert!(found.marked.is_none());

        // However late rustic's clock reads (within the margin), the plan keeps packs 2 and 3
        // and may still remove pack 1.
        let ages = found.ages(now, MINUTE, KEEP_DELETE);
        for plan_time in [now, now + 59 * SignedDuration::from_secs(1)] {
            assert!(!left_alone(packs.unmarked[&id(1)], plan_time, ages));
            assert!(left_alone(packs.unmarked[&id(2)], plan_time, ages));
            assert!(left_alone(packs.unmarked[&id(3)], plan_time, ages));
        }
        assert_eq!(ages.keep_delete, KEEP_DELETE);
        assert!(found.notes()[0].contains(id(2).to_hex().as_str()));
    }

    #[test]
    fn a_locked_marked_pack_stays_marked_and_earlier_marks_still_go() {
        let now = Timestamp::now();
        let mut packs = IndexedPacks::default();
        packs.marked.insert(id(1), ago(now, 48 * HOUR)); // due, unlocked
        packs.marked.insert(id(2), ago(now, 30 * HOUR)); // due, locked
        packs.marked.insert(id(3), ago(now, HOUR)); // locked, not due yet: never asked
        packs.unmarked.insert(id(4), ago(now, HOUR)); // unlocked
        let mut asked = Vec::new();
        let found = packs
            .locked(now, KEEP_DELETE, MINUTE, locks(&[id(2), id(3)], &mut asked))
            .unwrap();
        assert!(found.written.is_none());
        assert_eq!(found.marked.map(|(_, id, _)| id), Some(id(2)));
        assert_eq!(asked, [1, 2], "pack 4, then the two due marked packs");

        let ages = found.ages(now, MINUTE, KEEP_DELETE);
        assert_eq!(ages.keep_pack, SignedDuration::ZERO);
        let plan_time = now + 30 * SignedDuration::from_secs(1);
        assert!(deleted(packs.marked[&id(1)], plan_time, ages));
        assert!(!deleted(packs.marked[&id(2)], plan_time, ages));
        assert!(!deleted(packs.marked[&id(3)], plan_time, ages));
    }

    #[test]
    fn a_locked_pack_without_a_time_stops_prune() {
        let now = Timestamp::now();
        let mut packs = IndexedPacks::default();
        packs.unmarked.insert(id(1), None);
        packs.unmarked.insert(id(2), ago(now, HOUR));
        let mut asked = Vec::new();
        let err = packs
            .locked(now, KEEP_DELETE, MINUTE, locks(&[id(1)], &mut asked))
            .unwrap_err();
        assert!(matches!(err, Error::LockedPackWithoutTime { .. }), "{err}");
        assert!(err.to_string().contains("legal hold"), "{err}");
    }

    #[test]
    fn without_locks_the_ages_are_rustics_and_long_lists_go_in_batches() {
        let now = Timestamp::now();
        let mut packs = IndexedPacks::default();
        for n in 0..150 {
            packs
                .unmarked
                .insert(id(n), ago(now, SignedDuration::from_secs(i64::from(n) + 1)));
        }
        let mut asked = Vec::new();
        let found = packs
            .locked(now, KEEP_DELETE, MINUTE, locks(&[], &mut asked))
            .unwrap();
        assert!(found.is_empty() && found.notes().is_empty());
        assert_eq!(asked, [8, 16, 32, 64, 30]);
        let ages = found.ages(now, MINUTE, KEEP_DELETE);
        assert_eq!(
            ages,
            Ages {
                keep_pack: SignedDuration::ZERO,
                keep_delete: KEEP_DELETE
            }
        );

        // Pack 129 is the 21st oldest (higher ids are older): found in the second batch, and
        // the younger locked pack 3 is never asked about.
        let mut asked = Vec::new();
        let found = packs
            .locked(
                now,
                KEEP_DELETE,
                MINUTE,
                locks(&[id(129), id(3)], &mut asked),
            )
            .unwrap();
        assert_eq!(found.written.map(|(_, id, _)| id), Some(id(129)));
        assert_eq!(asked, [8, 16]);
    }
}
