//! The coalescing buffer: acknowledged updates, merged per user-goal, waiting for
//! the flusher, and acknowledged GDPR deletions waiting to be applied.
//!
//! The WAL writer applies updates here in sequence order (invariant 3), so the
//! buffer always holds exactly the WAL sequence numbers `(W, last_seq]`: a swap
//! boundary is one sequence number. Each goal kind has its own map and its own
//! merge rule, the same rule the SQL applies on conflict (docs/DESIGN.md, "Progress
//! rules"); a merge is associative, so coalescing N updates and applying them one
//! by one give the same row — `src/model.rs` states both and the property tests
//! check that they agree.
//!
//! A buffer may be *bounded* (`MEMORY_MAX_KEYS`): once it holds that many
//! entries it stops taking records at the next event boundary and is
//! *spilled*: the newer records stay in the WAL only (durable, acknowledged)
//! and are read back in order after the flush has made room
//! ([`Buffer::refill`]). It still holds exactly `(W, last_seq]`, so the
//! flush's watermark and the WAL's truncation need no change; memory stays
//! bounded whatever the length of a database outage or of the WAL replayed.
//!
//! A deletion removes every pending entry of its user (they were acknowledged
//! before it) and is kept until the flush, which deletes the user's rows
//! before it writes anything; entries applied after it are the user's fresh
//! start. A failed flush merged back under a newer batch loses its entries of
//! users that the newer batch deleted, for the same reason.

mod coalesce;
mod intake;
pub use coalesce::{Coalesce, Days, Latest, LatestDay, Sum};
pub use intake::Intake;

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};

use crate::rules::m5::Runs;
use crate::rules::row::{Micros, Row};
use crate::rules::{typed, Deletion, Op, Record, Update};
use crate::wal::dedup::{mark_of, Mark};
use crate::wal::Refill;

/// A `user_goal_progress` primary key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub user_id: String,
    pub goal_id: String,
}

/// What the row needs besides the progress: taken from the newest update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub challenge_id: String,
    pub namespace: String,
    pub target: i32,
    /// Whether the row may be created (the goal's `defaultAssigned`).
    pub creates_row: bool,
    /// How many updates were coalesced into the entry.
    pub records: u32,
    /// The earliest event time of those updates (Unix ms): a GDPR
    /// tombstone of another replica drops the entry if it is not later.
    pub first_ms: i64,
}

/// The first 16 bytes of `s` (zero-padded) as a big-endian number. Two
/// strings whose prefixes differ compare as the prefixes do (a string that
/// ends inside the prefix is padded with zeros, which sort first, as a
/// shorter string does); on equal prefixes the strings decide.
fn sort_prefix(s: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = s.len().min(16);
    bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}

/// Pending values of one goal kind, keyed by user-goal.
#[derive(Debug, Clone)]
pub struct Pending<T> {
    map: HashMap<Key, (Meta, T)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            map: HashMap::new(),
        }
    }
}

impl<T> Pending<T> {
    /// An empty map with room for as many entries as `self` holds: the
    /// buffer that follows a flushed one fills to about the same size, and
    /// growing to it rehashed every entry at each doubling.
    fn sized_like(&self) -> Pending<T> {
        Pending {
            map: HashMap::with_capacity(self.map.len()),
        }
    }
}

impl<T: Coalesce> Pending<T> {
    fn add(&mut self, key: Key, mut meta: Meta, value: T) {
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut pending) => {
                let (old_meta, older) = pending.get_mut();
                meta.records += old_meta.records;
                meta.first_ms = meta.first_ms.min(old_meta.first_ms);
                *old_meta = meta;
                older.merge(value);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((meta, value));
            }
        }
    }

    /// Merges `older` (entries acknowledged before everything in `self`) back in.
    fn absorb_older(&mut self, older: Pending<T>) {
        for (key, (old_meta, mut old_value)) in older.map {
            match self.map.remove(&key) {
                Some((mut meta, newer)) => {
                    meta.records += old_meta.records;
                    meta.first_ms = meta.first_ms.min(old_meta.first_ms);
                    old_value.merge(newer);
                    self.map.insert(key, (meta, old_value))
                }
                None => self.map.insert(key, (old_meta, old_value)),
            };
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries sorted by key, so every replica locks rows in the same order.
    pub fn sorted(&self) -> Vec<(&Key, &Meta, &T)> {
        let mut rows: Vec<_> = self.map.iter().map(|(k, (m, v))| (k, m, v)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        rows
    }

    pub fn get(&self, key: &Key) -> Option<&(Meta, T)> {
        self.map.get(key)
    }

    /// Drops every entry of `user_id` in `namespace`.
    fn remove_user(&mut self, user_id: &str, namespace: &str) {
        self.map
            .retain(|key, (meta, _)| key.user_id != user_id || meta.namespace != namespace);
    }
}

/// An acknowledged GDPR deletion waiting for the flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeletion {
    pub seq: u64,
    pub deletion: Deletion,
}

/// Everything acknowledged and not yet in the database.
#[derive(Debug, Clone, Default)]
pub struct Buffer {
    pub absolute: Pending<Latest>,
    pub increment: Pending<Sum>,
    pub daily_increment: Pending<Days>,
    pub daily: Pending<LatestDay>,
    pub m5: Pending<Runs>,
    /// GDPR deletions, in sequence order; the flush applies them first.
    pub deletions: Vec<PendingDeletion>,
    /// The event ids of every record applied (but empty ones), as dedup
    /// marks, in WAL order (an event's records are consecutive: one mark
    /// each). On PostgreSQL
    /// the flush records them in the cluster's ledger of applied events.
    pub events: Vec<Mark>,
    /// The goals (hashed) of the latest event's records so far: a record of
    /// the same event id for a goal already among them starts another
    /// delivery of that event (an event moves each goal once).
    run: Vec<u64>,
    /// The WAL sequence number this buffer's records follow (W): where the
    /// database's watermark stood when its first record was taken. A flush
    /// of it moves the watermark only from there.
    after: u64,
    /// The highest WAL sequence number applied.
    last_seq: u64,
    /// How many updates were applied (before coalescing).
    updates: u64,
    /// The most entries (and pending deletions) held; 0 means no bound.
    bound: usize,
    /// Records above `last_seq` are committed in the WAL but not held here
    /// (the bound was reached): they are read back by [`Buffer::refill`].
    spilled: bool,
}

/// What one delivery of an event holds once: a user-goal's record (an
/// event moves each goal of its player once; goal ids are unique in a
/// config), or the deletion; hashed.
fn delivery_key(record: &Record) -> u64 {
    match record {
        Record::Update(u) => {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(u.user_id.as_bytes());
            h.update(&[0]);
            h.update(u.goal_id.as_bytes());
            h.digest()
        }
        Record::Delete(_) => 0,
    }
}

/// How many event marks one entry of the bound stands for: a buffer also
/// spills when one player's updates coalesce into few keys but many events.
const MARKS_PER_KEY: usize = 16;

impl Buffer {
    /// An empty buffer that continues after `last_seq`.
    pub fn starting_after(last_seq: u64) -> Self {
        Buffer {
            after: last_seq,
            last_seq,
            ..Buffer::default()
        }
    }

    /// An empty buffer after `last_seq` that holds at most `max_keys` entries
    /// (see the module's doc); 0: no bound.
    pub fn bounded(last_seq: u64, max_keys: usize) -> Self {
        Buffer {
            after: last_seq,
            last_seq,
            bound: max_keys,
            ..Buffer::default()
        }
    }

    /// Entries and pending deletions: what the bound counts.
    fn held(&self) -> usize {
        self.len() + self.deletions.len()
    }

    /// Whether the bound is reached: a record that starts an event is not taken.
    fn full(&self) -> bool {
        self.bound != 0
            && (self.held() >= self.bound
                || self.events.len() >= self.bound.saturating_mul(MARKS_PER_KEY))
    }

    /// Takes committed records in sequence order (they follow `last_seq`)
    /// until the bound is reached at an event boundary — an event's records
    /// are never split between two flushes, so its mark goes into one
    /// flush's ledger — and then spills.
    fn hold(&mut self, records: Vec<(u64, Record)>) {
        for (seq, record) in records {
            if self.full() {
                let id = record.event_id();
                if id.is_empty() || self.events.last() != Some(&mark_of(id)) {
                    self.spilled = true;
                    return;
                }
            }
            self.apply(seq, record);
        }
    }

    /// Records committed in the WAL after `last_seq` and not held here, if any.
    pub fn spilled_after(&self) -> Option<u64> {
        self.spilled.then_some(self.last_seq)
    }

    /// Takes records read back from the WAL (the ones after `last_seq`, in
    /// order, ending at an event boundary); `to_the_end`: they reach the
    /// last record committed.
    pub fn refill(&mut self, records: Vec<(u64, Record)>, to_the_end: bool) -> Refill {
        self.spilled = false;
        self.hold(records);
        if self.spilled {
            Refill::Full
        } else if to_the_end {
            Refill::CaughtUp
        } else {
            self.spilled = true;
            Refill::More
        }
    }

    /// Applies the record with WAL sequence number `seq`. Callers apply in
    /// increasing `seq` order.
    pub fn apply(&mut self, seq: u64, record: Record) {
        debug_assert!(seq > self.last_seq || self.updates == 0);
        self.last_seq = self.last_seq.max(seq);
        self.updates += 1;
        // An event without an id is not deduplicated (as in the WAL). One
        // mark per delivery: a redelivery the WAL took again (its mark had
        // expired) shows as a mark twice ([`Buffer::repeated_events`]).
        let id = record.event_id();
        if !id.is_empty() {
            let mark = mark_of(id);
            let goal = delivery_key(&record);
            if self.events.last() != Some(&mark) || self.run.contains(&goal) {
                self.events.push(mark);
                self.run.clear();
            }
            self.run.push(goal);
        }
        match record {
            Record::Update(update) => self.apply_update(update),
            Record::Delete(deletion) => self.apply_deletion(seq, deletion),
        }
    }

    fn apply_deletion(&mut self, seq: u64, deletion: Deletion) {
        self.remove_user(&deletion.user_id, &deletion.namespace);
        self.deletions.push(PendingDeletion { seq, deletion });
    }

    fn remove_user(&mut self, user_id: &str, namespace: &str) {
        self.absolute.remove_user(user_id, namespace);
        self.increment.remove_user(user_id, namespace);
        self.daily_increment.remove_user(user_id, namespace);
        self.daily.remove_user(user_id, namespace);
        self.m5.remove_user(user_id, namespace);
    }

    fn apply_update(&mut self, update: Update) {
        let key = Key {
            user_id: update.user_id,
            goal_id: update.goal_id,
        };
        let meta = Meta {
            challenge_id: update.challenge_id,
            namespace: update.namespace,
            target: update.target,
            creates_row: update.creates_row,
            records: 1,
            first_ms: update.event_time_ms,
        };
        let time = update.event_time_ms;
        match update.op {
            Op::Set(value) => {
                let reached_ms = (value >= meta.target).then_some(time);
                self.absolute.add(
                    key,
                    meta,
                    Latest {
                        value,
                        event_time_ms: time,
                        reached_ms,
                    },
                )
            }
            Op::Add(delta) => self.increment.add(
                key,
                meta,
                Sum {
                    delta,
                    last_event_ms: time,
                },
            ),
            Op::CountDay(day) => {
                self.daily_increment
                    .add(key, meta, Days(BTreeMap::from([(day, time)])))
            }
            Op::CompleteDay(day) => self.daily.add(
                key,
                meta,
                LatestDay {
                    day,
                    event_time_ms: time,
                },
            ),
            Op::M5(step) => {
                let runs = Runs::of(&step, meta.target, time);
                self.m5.add(key, meta, runs)
            }
        }
    }

    /// Distinct user-goal entries across all kinds.
    pub fn len(&self) -> usize {
        self.absolute.len()
            + self.increment.len()
            + self.daily_increment.len()
            + self.daily.len()
            + self.m5.len()
    }

    /// Every entry, sorted by key (so every replica locks rows in the same
    /// order); a key in several kinds (a goal whose rules changed between
    /// a crash and the restart) has its entries in one fixed order.
    pub fn entries(&self) -> Entries<'_> {
        // Each entry is tagged with its user id's sort prefix: the sort
        // compares numbers held in the vector and reads the keys only on a
        // tie (comparing keys alone chased two pointers per comparison and
        // took 29% of the flush's CPU in the service; docs/BENCHMARKS.md,
        // "Fifth round").
        fn tagged<'b, T>(
            pending: &'b Pending<T>,
            kind: fn(&'b T) -> Entry<'b>,
        ) -> impl Iterator<Item = (u128, (&'b Key, &'b Meta, Entry<'b>))> {
            pending
                .map
                .iter()
                .map(move |(k, (m, v))| (sort_prefix(&k.user_id), (k, m, kind(v))))
        }
        let mut entries = Vec::with_capacity(self.len());
        entries.extend(tagged(&self.absolute, Entry::Absolute));
        entries.extend(tagged(&self.increment, Entry::Increment));
        entries.extend(tagged(&self.daily_increment, Entry::DailyIncrement));
        entries.extend(tagged(&self.daily, Entry::Daily));
        entries.extend(tagged(&self.m5, Entry::M5));
        // (key, kind) is unique: an unstable sort gives the one order.
        entries.sort_unstable_by(|(pa, a), (pb, b)| {
            pa.cmp(pb)
                .then_with(|| a.0.cmp(b.0))
                .then(a.2.order().cmp(&b.2.order()))
        });
        Entries(entries.into_iter().map(|(_, e)| e).collect())
    }

    /// Whether an entry's rules read the handler's own state of a row
    /// (`last_event_at`, `last_counted_day`): the type rules do, M5's do not.
    pub fn reads_goal_state(&self) -> bool {
        !(self.absolute.is_empty()
            && self.increment.is_empty()
            && self.daily_increment.is_empty()
            && self.daily.is_empty())
    }

    /// Nothing to flush: no entry and no deletion.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.deletions.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The sequence number this buffer's records follow (see the field).
    pub fn after(&self) -> u64 {
        self.after
    }

    /// Updates applied before coalescing.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The batch of records `(after, upto]` (read back from the WAL) without
    /// the events whose marks are in `skip`: what a flush writes once the
    /// cluster's ledger says another flush applied those.
    pub fn rebuilt(
        after: u64,
        upto: u64,
        records: Vec<(u64, Record)>,
        skip: &std::collections::HashSet<Mark>,
    ) -> Buffer {
        let records = records
            .into_iter()
            .filter(|(_, record)| {
                let id = record.event_id();
                id.is_empty() || !skip.contains(&mark_of(id))
            })
            .collect();
        Buffer::first_deliveries(after, upto, records).0
    }

    /// Whether an event's mark is here twice: delivered again after its
    /// dedup mark expired (`DEDUP_WINDOW`, `DEDUP_MAX_MARKS`) while the first
    /// delivery still waited for the database, so the WAL took both. The
    /// cluster's ledger claims a mark once per flush and cannot tell; the
    /// flusher rebuilds such a batch with [`Buffer::first_deliveries`].
    pub fn repeated_events(&self) -> bool {
        let mut seen = foldhash::HashSet::default();
        self.events.iter().any(|m| !seen.insert(*m))
    }

    /// The records of `(after, upto]`, read back from the WAL, with every
    /// event's first delivery only; returns the buffer and how many later
    /// deliveries were left out.
    pub fn first_deliveries(after: u64, upto: u64, records: Vec<(u64, Record)>) -> (Buffer, u64) {
        let mut buffer = Buffer::starting_after(after);
        let mut ended = std::collections::HashSet::new();
        let mut current: Option<Mark> = None;
        let mut run: Vec<u64> = Vec::new();
        let (mut dropping, mut dropped) = (false, 0);
        for (seq, record) in records {
            let id = record.event_id();
            if id.is_empty() {
                if let Some(prev) = current.take() {
                    ended.insert(prev);
                }
                dropping = false;
                buffer.apply(seq, record);
                continue;
            }
            let mark = mark_of(id);
            let goal = delivery_key(&record);
            if current != Some(mark) || run.contains(&goal) {
                if let Some(prev) = current {
                    ended.insert(prev);
                }
                current = Some(mark);
                run.clear();
                dropping = ended.contains(&mark);
                dropped += u64::from(dropping);
            }
            run.push(goal);
            if !dropping {
                buffer.apply(seq, record);
            }
        }
        buffer.last_seq = upto;
        (buffer, dropped)
    }

    /// Takes everything out; `self` continues empty after the same sequence
    /// number, with the same bound (and still spilled if it was), sized for
    /// as many entries as it held.
    pub fn take(&mut self) -> Buffer {
        let next = Buffer {
            absolute: self.absolute.sized_like(),
            increment: self.increment.sized_like(),
            daily_increment: self.daily_increment.sized_like(),
            daily: self.daily.sized_like(),
            m5: self.m5.sized_like(),
            events: Vec::with_capacity(self.events.len()),
            after: self.last_seq,
            last_seq: self.last_seq,
            bound: self.bound,
            spilled: self.spilled,
            ..Buffer::default()
        };
        std::mem::replace(self, next)
    }

    /// The next batch to write: `in_doubt` (a failed flush's batch) with
    /// everything taken from this buffer while both fit within the bound;
    /// otherwise `in_doubt` alone, and this buffer goes on filling up to its
    /// bound and spills. So a batch retried through a long outage never
    /// grows past the bound, however slowly new players trickle in between
    /// two retries.
    pub fn next_batch(&mut self, in_doubt: Option<Buffer>) -> Buffer {
        match in_doubt {
            None => self.take(),
            Some(older) if self.bound != 0 && self.held() + older.held() > self.bound => older,
            Some(older) => {
                let mut batch = self.take();
                batch.merge_back(older);
                batch
            }
        }
    }

    /// Puts back a buffer taken earlier whose flush failed. Its entries are older
    /// than everything applied since, and merge under the same rules.
    pub fn merge_back(&mut self, mut older: Buffer) {
        // What the older batch holds of a user deleted since was acknowledged
        // before that deletion.
        for pending in &self.deletions {
            let d = &pending.deletion;
            older.remove_user(&d.user_id, &d.namespace);
        }
        older.deletions.append(&mut self.deletions);
        self.deletions = older.deletions;
        older.events.append(&mut self.events);
        self.events = older.events;
        self.absolute.absorb_older(older.absolute);
        self.increment.absorb_older(older.increment);
        self.daily_increment.absorb_older(older.daily_increment);
        self.daily.absorb_older(older.daily);
        self.m5.absorb_older(older.m5);
        self.after = self.after.min(older.after);
        self.last_seq = self.last_seq.max(older.last_seq);
        self.updates += older.updates;
    }
}

/// What a flush does with the rows its entries touch (keys borrowed from
/// the buffer).
#[derive(Debug, Default)]
pub struct Plan<'b> {
    /// The rows that change, with their new columns, in key order; each
    /// with the position of its key among the entries' keys (each counted
    /// once), as [`Entries::plan`] gave it to `row_of`.
    pub writes: Vec<(usize, &'b Key, Row)>,
    /// Entries whose row does not exist, with how many updates each holds.
    pub missing: Vec<(&'b Key, u32)>,
    /// Updates not applied because their row is inactive.
    pub inactive: u64,
    /// Updates not applied because their row is claimed (and the rules keep it so).
    pub claimed: u64,
}

impl Buffer {
    /// [`Entries::plan`] of every entry.
    pub fn plan<'r>(&self, row_of: impl Fn(&Key) -> Option<&'r Row>, now: Micros) -> Plan<'_> {
        self.entries().plan(|_, key| row_of(key), now)
    }

    /// [`Entries::new_rows`] of every entry.
    pub fn new_rows(&self) -> Vec<(Key, &Meta, Row)> {
        self.entries().new_rows()
    }
}

/// Every entry of a buffer, sorted by key (so every replica locks rows in
/// the same order); sorted once per flush, read by each step of it.
pub struct Entries<'b>(Vec<(&'b Key, &'b Meta, Entry<'b>)>);

impl<'b> Entries<'b> {
    pub fn as_slice(&self) -> &[(&'b Key, &'b Meta, Entry<'b>)] {
        &self.0
    }

    /// The entries in chunks of whole players, in order, each of at most
    /// `max_keys` keys (a player with more is a chunk of its own), so a flush
    /// can take a large batch a chunk at a time.
    pub fn into_user_chunks(self, max_keys: usize) -> Vec<Entries<'b>> {
        let max_keys = max_keys.max(1);
        let mut chunks = Vec::new();
        let (mut chunk, mut keys) = (Vec::new(), 0);
        let mut rest = self.0.as_slice();
        while let Some(((first, _, _), _)) = rest.split_first() {
            // One player's entries, and how many keys they hold.
            let user = rest
                .iter()
                .take_while(|(k, _, _)| k.user_id == first.user_id)
                .count();
            let (player, after) = rest.split_at(user);
            rest = after;
            let player_keys = 1 + player.windows(2).filter(|w| w[0].0 != w[1].0).count();
            if keys > 0 && keys + player_keys > max_keys {
                chunks.push(Entries(std::mem::take(&mut chunk)));
                keys = 0;
            }
            chunk.extend_from_slice(player);
            keys += player_keys;
        }
        if !chunk.is_empty() {
            chunks.push(Entries(chunk));
        }
        chunks
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &Meta) -> bool) {
        self.0.retain(|(key, meta, _)| keep(key, meta));
    }

    /// Applies every entry to its row as `row_of(position, key)` finds it
    /// (None: the row does not exist), in key order; the position is the
    /// key's among the entries' keys, each counted once (0, 1, 2, …); `now`
    /// is the flush's time.
    pub fn plan<'r>(
        &self,
        row_of: impl Fn(usize, &Key) -> Option<&'r Row>,
        now: Micros,
    ) -> Plan<'b> {
        let mut plan = Plan::default();
        let mut rest = self.0.as_slice();
        let mut at = 0;
        while let Some(((key, _, _), _)) = rest.split_first() {
            let same = rest.iter().take_while(|(k, _, _)| k == key).count();
            let (group, after) = rest.split_at(same);
            rest = after;
            let position = at;
            at += 1;
            let Some(start) = row_of(position, key) else {
                let records = group.iter().map(|(_, meta, _)| meta.records).sum();
                plan.missing.push((*key, records));
                continue;
            };
            let mut current: Option<Row> = None;
            for (_, meta, entry) in group {
                let base = current.as_ref().unwrap_or(start);
                match entry.apply(base, meta, now) {
                    Some(next) => current = Some(next),
                    None if !base.is_active => plan.inactive += u64::from(meta.records),
                    None if base.status == crate::rules::row::Status::Claimed => {
                        plan.claimed += u64::from(meta.records)
                    }
                    None => {}
                }
            }
            if let Some(next) = current.filter(|next| next != start) {
                plan.writes.push((position, *key, next));
            }
        }
        plan
    }

    /// The rows of the entries' goals assigned by default, as the handler
    /// creates them where it owns the table (at each entry's first update).
    pub fn new_rows(&self) -> Vec<(Key, &'b Meta, Row)> {
        let mut rows: Vec<(Key, &'b Meta, Row)> = Vec::new();
        for &(key, meta, entry) in &self.0 {
            if !meta.creates_row || rows.last().is_some_and(|(k, _, _)| k == key) {
                continue;
            }
            let rule = match entry {
                Entry::M5(runs) => runs
                    .0
                    .first()
                    .map(|run| crate::rules::GoalRule::M5(run.goal)),
                _ => None,
            }
            .unwrap_or(crate::rules::GoalRule::Typed(
                crate::rules::GoalKind::Increment,
            ));
            rows.push((
                key.clone(),
                meta,
                crate::rules::assigned_row(&rule, entry.first_ms()),
            ));
        }
        rows
    }
}

/// One coalesced buffer entry of any kind.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'b> {
    Absolute(&'b Latest),
    Increment(&'b Sum),
    DailyIncrement(&'b Days),
    Daily(&'b LatestDay),
    M5(&'b Runs),
}

impl Entry<'_> {
    fn order(&self) -> u8 {
        match self {
            Entry::Absolute(_) => 0,
            Entry::Increment(_) => 1,
            Entry::DailyIncrement(_) => 2,
            Entry::Daily(_) => 3,
            Entry::M5(_) => 4,
        }
    }

    /// What the entry does to `row` (None: nothing): the same rules as
    /// its updates one by one (`src/rules`); `now` is the flush's time,
    /// the type rules' `updated_at`.
    pub fn apply(&self, row: &Row, meta: &Meta, now: Micros) -> Option<Row> {
        match self {
            Entry::Absolute(latest) => typed::set(
                row,
                latest.value,
                latest.event_time_ms,
                latest.reached_ms,
                now,
            ),
            Entry::Increment(sum) => {
                typed::add(row, sum.delta, meta.target, sum.last_event_ms, now)
            }
            Entry::DailyIncrement(days) => {
                // Oldest day first, as the rule book counts them.
                let mut current: Option<Row> = None;
                for (&day, &time) in &days.0 {
                    let base = current.as_ref().unwrap_or(row);
                    if let Some(next) = typed::count_day(base, day, meta.target, time, now) {
                        current = Some(next);
                    }
                }
                current
            }
            Entry::Daily(latest) => typed::complete_day(row, latest.day, latest.event_time_ms, now),
            Entry::M5(runs) => runs.apply(row),
        }
    }

    /// The earliest time among its updates (Unix ms): when a player the
    /// handler initializes for it was first seen.
    pub fn first_ms(&self) -> i64 {
        match self {
            Entry::Absolute(latest) => latest.event_time_ms,
            Entry::Increment(sum) => sum.last_event_ms,
            Entry::DailyIncrement(days) => days.0.values().copied().min().unwrap_or(0),
            Entry::Daily(latest) => latest.event_time_ms,
            Entry::M5(runs) => runs.first_ms(),
        }
    }
}

/// Replay (and anything else single-threaded) applies straight into a
/// buffer: all of it, or, bounded, until the bound.
impl crate::wal::Sink for Buffer {
    fn committed(&mut self, records: Vec<(u64, Record)>) {
        if !self.spilled {
            self.hold(records);
        }
    }

    fn spilled_after(&self) -> Option<u64> {
        Buffer::spilled_after(self)
    }

    fn refill(&mut self, records: Vec<(u64, Record)>, to_the_end: bool) -> Refill {
        Buffer::refill(self, records, to_the_end)
    }
}

#[cfg(test)]
mod tests;
