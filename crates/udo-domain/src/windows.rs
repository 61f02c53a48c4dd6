//! Event-time sliding windows built from panes (design §4).
//!
//! A window of `size` sliding by `slide` is the merge of `size / slide`
//! consecutive panes of length `slide`, so each event is aggregated once (into
//! its pane) rather than once per overlapping window. Windows close in order
//! when the watermark (max event time seen − allowed lateness, or the idle
//! advance) passes their end. An event whose first window already closed is
//! late: it is returned to the caller to be counted and reported, never
//! folded silently into a partial set of windows.
//!
//! State is keyed: each key (a subject) holds its own panes and rule state,
//! so a checkpoint can write the keys that changed and nothing else.

use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

/// Something that panes hold and windows merge.
pub trait Aggregate: Default {
    type Item;
    fn add(&mut self, item: &Self::Item);
    fn merge(&mut self, other: &Self);
    /// Heap bytes held besides the value itself (memory accounting).
    fn heap_bytes(&self) -> usize {
        0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub size_ms: i64,
    pub slide_ms: i64,
    pub allowed_lateness_ms: i64,
}

impl WindowSpec {
    pub fn new(size_ms: i64, slide_ms: i64, allowed_lateness_ms: i64) -> Result<WindowSpec, String> {
        if slide_ms <= 0 || size_ms <= 0 {
            return Err(format!("window size ({size_ms} ms) and slide ({slide_ms} ms) must be positive"));
        }
        if size_ms % slide_ms != 0 {
            return Err(format!("window size ({size_ms} ms) must be a multiple of the slide ({slide_ms} ms)"));
        }
        if allowed_lateness_ms < 0 {
            return Err(format!("allowed lateness must be >= 0, got {allowed_lateness_ms} ms"));
        }
        Ok(WindowSpec { size_ms, slide_ms, allowed_lateness_ms })
    }

    /// Start of the pane holding `t`.
    pub fn pane_of(&self, t: i64) -> i64 {
        t.div_euclid(self.slide_ms) * self.slide_ms
    }

    /// End of the first (earliest-closing) window holding `t`.
    pub fn first_window_end(&self, t: i64) -> i64 {
        self.pane_of(t) + self.slide_ms
    }
}

/// Why an event was refused: its first window already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// The event's time.
    pub at: i64,
    pub first_window_end: i64,
    pub watermark: i64,
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "field `occurred_at`: {} is late: every window holding it has closed (the first ended at {}; windows \
             are closed through {}, the newest event time seen minus analyze.allowed_lateness); send events in \
             time order per key, or raise analyze.allowed_lateness",
            rfc3339(self.at),
            rfc3339(self.first_window_end),
            rfc3339(self.watermark)
        )
    }
}

/// Epoch milliseconds as an RFC 3339 time, for messages people read.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A closed window of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed<K, A> {
    pub key: K,
    pub start: i64,
    pub end: i64,
    pub agg: A,
}

/// The stream-wide part of a window set: where event time and closing
/// stand. Small, whatever the number of keys; checkpointed with the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    spec: WindowSpec,
    max_event_time: Option<i64>,
    /// Watermark from the idle advance, when it exceeds the event one.
    idle_watermark: Option<i64>,
    /// Every window with end <= this has been emitted.
    closed_through: Option<i64>,
    /// Cap on the event watermark when several inputs feed these windows:
    /// the slowest input's watermark (see `limit_watermark`).
    limit: Option<i64>,
}

impl Clock {
    fn new(spec: WindowSpec) -> Clock {
        Clock { spec, max_event_time: None, idle_watermark: None, closed_through: None, limit: None }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    fn watermark(&self) -> Option<i64> {
        let event = self.max_event_time.map(|t| t - self.spec.allowed_lateness_ms);
        let event = match (event, self.limit) {
            (Some(e), Some(l)) => Some(e.min(l)),
            (e, _) => e,
        };
        match (event, self.idle_watermark) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Windows ending at or before this are closed: a capped watermark may
    /// sit behind windows already emitted, which stay closed.
    fn closed(&self) -> Option<i64> {
        match (self.watermark(), self.closed_through) {
            (Some(w), Some(c)) => Some(w.max(c)),
            (w, c) => w.or(c),
        }
    }

    /// First pane start an open window may still need.
    fn keep_from(&self) -> Option<i64> {
        self.closed_through.map(|c| c + self.spec.slide_ms - self.spec.size_ms)
    }
}

/// Keys changed (with their entries) and keys removed.
pub type Changed<'a, K, A, R> = (Vec<(&'a K, &'a Entry<A, R>)>, Vec<&'a K>);

/// One key's state: its open panes (sorted by start), the rule state that
/// outlives them, and its newest event time (for `ttl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry<A, R> {
    pub panes: Vec<(i64, A)>,
    pub rules: R,
    pub last_event: i64,
}

/// A key that had no data for the time to live: what its rules held.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired<K, R> {
    pub key: K,
    pub rules: R,
    /// Its last event time plus the time to live (deterministic).
    pub at: i64,
}

struct Slot<K, A, R> {
    key: K,
    entry: Entry<A, R>,
    /// Changed since the last checkpoint.
    dirty: bool,
}

/// Keyed window state for keys `K`: per key, panes `A` and rule state `R`.
///
/// Sized for hundreds of thousands of keys: keys live in slots found by
/// hash; an index by pane start finds the keys a closing window holds, so
/// closing costs what it emits, not the number of keys; changed keys are
/// tracked, so a checkpoint writes only them; a key whose panes are all
/// closed keeps only its rule state, or nothing.
pub struct Windows<K, A, R = ()> {
    clock: Clock,
    /// Expire keys with no panes after this long without data (0: never).
    ttl_ms: i64,
    ids: HashMap<K, u32>,
    slots: Vec<Option<Slot<K, A, R>>>,
    free: Vec<u32>,
    /// Pane start -> the slots holding that pane.
    by_pane: BTreeMap<i64, Vec<u32>>,
    /// Slots without panes, kept for their rule state: (last event, slot).
    quiet: BTreeSet<(i64, u32)>,
    dirty: Vec<u32>,
    removed: Vec<K>,
    expired: Vec<Expired<K, R>>,
}

impl<K, A, R> std::fmt::Debug for Windows<K, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windows").field("clock", &self.clock).field("keys", &self.ids.len()).finish()
    }
}

impl<K, A, R> Windows<K, A, R>
where
    K: Ord + Hash + Clone,
    A: Aggregate + Clone,
    R: Default + Clone + PartialEq,
{
    pub fn new(spec: WindowSpec) -> Self {
        Self::with_clock(Clock::new(spec), 0)
    }

    fn with_clock(clock: Clock, ttl_ms: i64) -> Self {
        Windows {
            clock,
            ttl_ms,
            ids: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_pane: BTreeMap::new(),
            quiet: BTreeSet::new(),
            dirty: Vec::new(),
            removed: Vec::new(),
            expired: Vec::new(),
        }
    }

    /// Keys with no panes and no data for `ttl_ms` of event time are
    /// dropped, their rule state handed to `take_expired` (0: never).
    pub fn set_ttl(&mut self, ttl_ms: i64) {
        self.ttl_ms = ttl_ms;
    }

    /// Rebuilds a window set from its clock and entries (a checkpoint).
    /// Panes no open window needs are dropped (a checkpoint does not
    /// rewrite a key for closing), and keys left with nothing are recorded
    /// as removed, so the next checkpoint deletes them.
    pub fn restore(clock: Clock, ttl_ms: i64, entries: impl IntoIterator<Item = (K, Entry<A, R>)>) -> Self {
        let mut w = Self::with_clock(clock, ttl_ms);
        let keep_from = w.clock.keep_from();
        for (key, mut entry) in entries {
            if let Some(k) = keep_from {
                let n = entry.panes.partition_point(|p| p.0 < k);
                entry.panes.drain(..n);
            }
            if entry.panes.is_empty() && entry.rules == R::default() {
                w.removed.push(key);
                continue;
            }
            entry.panes.shrink_to_fit();
            let starts: Vec<i64> = entry.panes.iter().map(|p| p.0).collect();
            let last = entry.last_event;
            let id = w.insert(key, entry);
            for s in &starts {
                w.by_pane.entry(*s).or_default().push(id);
            }
            if starts.is_empty() {
                w.quiet.insert((last, id));
            }
        }
        w
    }

    pub fn spec(&self) -> WindowSpec {
        self.clock.spec
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn watermark(&self) -> Option<i64> {
        self.clock.watermark()
    }

    /// The end of the last window closed, if any.
    pub fn closed_through(&self) -> Option<i64> {
        self.clock.closed_through
    }

    /// Keys held (with panes or rule state).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `key` (or a borrowed form of it, hashing the same) is held.
    pub fn contains<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> bool {
        self.ids.contains_key(key)
    }

    /// Why an event at `t` would be late, if it would.
    pub fn late(&self, t: i64) -> Option<Late> {
        // Late: the first window holding `t` ended at or behind the watermark,
        // so it is (or will be, at the next `close`) emitted without it.
        let watermark = self.clock.closed()?;
        let first_window_end = self.clock.spec.first_window_end(t);
        (first_window_end <= watermark).then_some(Late { at: t, first_window_end, watermark })
    }

    /// An on-time event that was not added (refused for another reason)
    /// still shows that event time has come this far.
    pub fn observe(&mut self, t: i64) {
        if self.late(t).is_none() {
            self.clock.max_event_time = Some(self.clock.max_event_time.map_or(t, |m| m.max(t)));
        }
    }

    /// Adds an event, or says why it is late (the caller reports it).
    pub fn add(&mut self, key: K, t: i64, item: &A::Item) -> Result<(), Late> {
        let mut key = Some(key);
        self.add_by(&key.clone().expect("set"), |_| key.take().expect("called once"), t, item)
    }

    /// `add` by a borrowed form of the key; `owned` makes the key only when
    /// it is new (no allocation per event for a known key).
    pub fn add_by<Q: Hash + Equivalent<K> + ?Sized>(
        &mut self,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        t: i64,
        item: &A::Item,
    ) -> Result<(), Late> {
        if let Some(late) = self.late(t) {
            return Err(late);
        }
        let watermark = self.clock.watermark();
        self.clock.max_event_time = Some(self.clock.max_event_time.map_or(t, |m| m.max(t)));
        let pane = self.clock.spec.pane_of(t);
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => self.insert(owned(key), Entry { panes: Vec::new(), rules: R::default(), last_event: t }),
        };
        let Some(slot) = self.slots[id as usize].as_mut() else { unreachable!("indexed slots are live") };
        if slot.entry.panes.is_empty() {
            // A quiet key wakes up; if its time to live had already passed,
            // its old rule state expires first (as it would have at a close).
            self.quiet.remove(&(slot.entry.last_event, id));
            let due = slot.entry.last_event.saturating_add(self.ttl_ms);
            if self.ttl_ms > 0 && watermark.is_some_and(|w| due <= w) && slot.entry.rules != R::default() {
                let rules = std::mem::take(&mut slot.entry.rules);
                self.expired.push(Expired { key: slot.key.clone(), rules, at: due });
            }
        }
        slot.entry.last_event = slot.entry.last_event.max(t);
        match slot.entry.panes.binary_search_by_key(&pane, |p| p.0) {
            Ok(i) => slot.entry.panes[i].1.add(item),
            Err(i) => {
                let mut agg = A::default();
                agg.add(item);
                slot.entry.panes.insert(i, (pane, agg));
                self.by_pane.entry(pane).or_default().push(id);
            }
        }
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id);
        }
        Ok(())
    }

    fn insert(&mut self, key: K, entry: Entry<A, R>) -> u32 {
        let slot = Slot { key: key.clone(), entry, dirty: false };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        id
    }

    fn remove(&mut self, id: u32) -> Option<Slot<K, A, R>> {
        let slot = self.slots.get_mut(id as usize)?.take()?;
        self.ids.remove(&slot.key);
        self.free.push(id);
        self.removed.push(slot.key.clone());
        Some(slot)
    }

    /// Renumbers the live slots densely (every index follows), so freed
    /// slots stop holding memory.
    fn compact(&mut self) {
        let mut map = vec![u32::MAX; self.slots.len()];
        let mut slots = Vec::with_capacity(self.ids.len());
        for (old, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if let Some(s) = slot {
                map[old] = slots.len() as u32;
                slots.push(Some(s));
            }
        }
        self.slots = slots;
        self.free = Vec::new();
        for id in self.ids.values_mut() {
            *id = map[*id as usize];
        }
        for ids in self.by_pane.values_mut() {
            for id in ids.iter_mut() {
                *id = map[*id as usize];
            }
        }
        self.quiet = self.quiet.iter().map(|(t, id)| (*t, map[*id as usize])).collect();
        self.dirty = self.dirty.iter().map(|id| map[*id as usize]).filter(|id| *id != u32::MAX).collect();
    }

    /// A slot left without panes keeps its rule state (quiet) or goes.
    fn settle(&mut self, id: u32) {
        let Some(slot) = self.slots[id as usize].as_mut() else { return };
        if !slot.entry.panes.is_empty() {
            return;
        }
        if slot.entry.rules == R::default() {
            self.remove(id);
        } else {
            slot.entry.panes = Vec::new();
            self.quiet.insert((slot.entry.last_event, id));
        }
    }

    /// Caps the event watermark (`None` lifts the cap). With several inputs
    /// the watermark is the slowest input's, as in Flink: an input running
    /// behind another does not see its events declared late. Never moves the
    /// watermark back past windows already closed.
    pub fn limit_watermark(&mut self, limit: Option<i64>) {
        self.clock.limit = limit;
    }

    /// Moves the watermark by wall-clock idleness: the partition saw its last
    /// event `idle_ms` ago, so event time is assumed to have moved as much.
    pub fn advance_idle(&mut self, idle_ms: i64) {
        if let Some(m) = self.clock.max_event_time {
            let w = m + idle_ms - self.clock.spec.allowed_lateness_ms;
            self.clock.idle_watermark = Some(self.clock.idle_watermark.map_or(w, |x| x.max(w)));
        }
    }

    /// Closes every window whose end <= watermark, in (end, key) order,
    /// handing each to `f` with the key's rule state; then drops panes no
    /// open window needs and expires keys quiet for longer than the time to
    /// live (see `take_expired`).
    pub fn close(&mut self, mut f: impl FnMut(&K, i64, i64, A, &mut R)) {
        let Some(wm) = self.clock.watermark() else { return };
        let (size, slide) = (self.clock.spec.size_ms, self.clock.spec.slide_ms);
        let mut end = self.clock.closed_through.map_or(i64::MIN / 2, |c| c + slide);
        // Windows holding no pane emit nothing: jump to the next window
        // that holds one, which ends one slide after its first pane.
        while let Some((&first, _)) = self.by_pane.range(end.saturating_sub(size)..).next() {
            end = end.max(first + slide);
            if end > wm {
                break;
            }
            let start = end - size;
            let mut ids: Vec<u32> = self.by_pane.range(start..end).flat_map(|(_, v)| v.iter().copied()).collect();
            ids.sort_unstable();
            ids.dedup();
            let slots = &self.slots;
            let key_of = |id: &u32| slots[*id as usize].as_ref().map(|s| &s.key);
            ids.sort_by(|a, b| key_of(a).cmp(&key_of(b)));
            for id in ids {
                let Some(slot) = self.slots[id as usize].as_mut() else { continue };
                let panes = &slot.entry.panes;
                let lo = panes.partition_point(|p| p.0 < start);
                let mut agg = A::default();
                for (_, pane) in panes[lo..].iter().take_while(|p| p.0 < end) {
                    agg.merge(pane);
                }
                let before = slot.entry.rules.clone();
                f(&slot.key, start, end, agg, &mut slot.entry.rules);
                if slot.entry.rules != before && !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(id);
                }
            }
            self.clock.closed_through = Some(end);
            end += slide;
        }
        // A pane is needed while some open window (end > closed_through) holds it.
        if let Some(keep_from) = self.clock.keep_from() {
            let old: Vec<i64> = self.by_pane.range(..keep_from).map(|(p, _)| *p).collect();
            let mut touched = BTreeSet::new();
            for p in old {
                touched.extend(self.by_pane.remove(&p).unwrap_or_default());
            }
            for id in touched {
                if let Some(slot) = self.slots[id as usize].as_mut() {
                    let n = slot.entry.panes.partition_point(|p| p.0 < keep_from);
                    slot.entry.panes.drain(..n);
                }
                self.settle(id);
            }
        }
        // After a burst of keys has gone, give their memory back.
        if self.free.len() > 1024 && self.free.len() > self.ids.len() {
            self.compact();
        }
        if self.ids.capacity() > 4 * self.ids.len() + 1024 {
            self.ids.shrink_to_fit();
        }
        if self.ttl_ms > 0 {
            while let Some(&(last, id)) = self.quiet.first() {
                if last.saturating_add(self.ttl_ms) > wm {
                    break;
                }
                self.quiet.pop_first();
                if let Some(slot) = self.remove(id) {
                    self.expired.push(Expired { key: slot.key, rules: slot.entry.rules, at: last + self.ttl_ms });
                }
            }
        }
    }

    /// `close`, collecting the closed windows (keys without rule state).
    pub fn close_all(&mut self) -> Vec<Closed<K, A>> {
        let mut out = Vec::new();
        self.close(|key, start, end, agg, _| out.push(Closed { key: key.clone(), start, end, agg }));
        out
    }

    /// Keys expired since the last call, with the rule state they held.
    pub fn take_expired(&mut self) -> Vec<Expired<K, R>> {
        std::mem::take(&mut self.expired)
    }

    /// Forgets events after `limit`: panes that start after it go and the
    /// event watermark comes back to it. For a restored state written before
    /// event times from the future were refused. Returns the panes dropped.
    pub fn forget_after(&mut self, limit: i64) -> usize {
        use std::ops::Bound::{Excluded, Unbounded};
        let future: Vec<i64> = self.by_pane.range((Excluded(limit), Unbounded)).map(|(p, _)| *p).collect();
        let mut touched = BTreeSet::new();
        let mut dropped = 0;
        for p in future {
            let ids = self.by_pane.remove(&p).unwrap_or_default();
            dropped += ids.len();
            touched.extend(ids);
        }
        for id in touched {
            if let Some(slot) = self.slots[id as usize].as_mut() {
                slot.entry.panes.retain(|p| p.0 <= limit);
                slot.entry.last_event = slot.entry.last_event.min(limit);
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push(id);
                }
            }
            self.settle(id);
        }
        self.clock.max_event_time = self.clock.max_event_time.map(|m| m.min(limit));
        let lateness = self.clock.spec.allowed_lateness_ms;
        self.clock.idle_watermark = self.clock.idle_watermark.map(|w| w.min(limit - lateness));
        dropped
    }

    /// Keys changed since `mark_clean` (with their entries) and keys removed.
    pub fn changes(&self) -> Changed<'_, K, A, R> {
        let mut ids = self.dirty.clone();
        ids.sort_unstable();
        ids.dedup();
        let put: Vec<(&K, &Entry<A, R>)> = ids
            .into_iter()
            .filter_map(|id| self.slots[id as usize].as_ref())
            .filter(|s| s.dirty)
            .map(|s| (&s.key, &s.entry))
            .collect();
        let mut delete: Vec<&K> = self.removed.iter().filter(|k| !self.ids.contains_key(*k)).collect();
        delete.sort();
        delete.dedup();
        (put, delete)
    }

    /// Every key held, with its entry.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &Entry<A, R>)> {
        self.slots.iter().flatten().map(|s| (&s.key, &s.entry))
    }

    /// The changes were written: nothing is changed any more.
    pub fn mark_clean(&mut self) {
        for id in self.dirty.drain(..) {
            if let Some(s) = self.slots[id as usize].as_mut() {
                s.dirty = false;
            }
        }
        self.removed.clear();
    }

    /// The rule state of every key.
    pub fn rules(&self) -> impl Iterator<Item = (&K, &R)> {
        self.slots.iter().flatten().map(|s| (&s.key, &s.entry.rules))
    }

    /// Number of keys with open panes.
    pub fn active_keys(&self) -> usize {
        self.ids.len() - self.quiet.len()
    }

    pub fn pane_count(&self) -> usize {
        self.by_pane.values().map(Vec::len).sum()
    }

    /// Estimated heap bytes held, `key_bytes` giving a key's own heap use.
    pub fn heap_bytes(&self, key_bytes: impl Fn(&K) -> usize) -> usize {
        use std::mem::size_of;
        let slots: usize = self
            .slots
            .iter()
            .flatten()
            .map(|s| {
                let panes: usize = s.entry.panes.iter().map(|(_, a)| a.heap_bytes()).sum();
                // The key is held twice: in its slot and in the hash index.
                2 * key_bytes(&s.key) + s.entry.panes.capacity() * size_of::<(i64, A)>() + panes
            })
            .sum();
        let index = self.ids.capacity() * (size_of::<K>() + size_of::<u32>() + 1);
        let by_pane = self.pane_count() * size_of::<u32>() + self.by_pane.len() * 64;
        slots
            + self.slots.capacity() * size_of::<Option<Slot<K, A, R>>>()
            + index
            + by_pane
            + self.quiet.len() * 2 * size_of::<(i64, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sum and count of i64 values: the simplest aggregate to check against.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Sum(i64, u64);

    impl Aggregate for Sum {
        type Item = i64;
        fn add(&mut self, v: &i64) {
            self.0 += v;
            self.1 += 1;
        }
        fn merge(&mut self, o: &Self) {
            self.0 += o.0;
            self.1 += o.1;
        }
    }

    fn spec() -> WindowSpec {
        WindowSpec::new(300, 60, 30).unwrap()
    }

    #[test]
    fn spec_rejects_bad_shapes() {
        assert!(WindowSpec::new(300, 70, 0).unwrap_err().contains("multiple"));
        assert!(WindowSpec::new(0, 60, 0).is_err());
        assert!(WindowSpec::new(300, 60, -1).is_err());
    }

    #[test]
    fn window_closes_once_watermark_passes_its_end() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 10, &1).unwrap();
        w.add("a", 70, &2).unwrap();
        assert!(w.close_all().is_empty()); // wm = 70 - 30 = 40 < 60
        w.add("a", 95, &4).unwrap(); // wm = 65: window [-240, 60) closes
        let c = w.close_all();
        assert_eq!(c, vec![Closed { key: "a", start: -240, end: 60, agg: Sum(1, 1) }]);
        w.add("a", 400, &8).unwrap(); // wm = 370: ends 120..=360 close
        let ends: Vec<i64> = w.close_all().iter().map(|c| c.end).collect();
        assert_eq!(ends, [120, 180, 240, 300, 360]);
    }

    #[test]
    fn events_behind_a_closed_window_are_late_and_handed_back() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 200, &1).unwrap(); // wm 170: windows ending <= 170 are closed
        // Its first window [.., 120) is closed.
        assert_eq!(w.add("a", 100, &1), Err(Late { at: 100, first_window_end: 120, watermark: 170 }));
        assert_eq!(w.add("a", 125, &1), Ok(())); // still within lateness
    }

    #[test]
    fn a_late_event_is_explained_in_readable_times() {
        const T: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let late = Late { at: T + 1_500, first_window_end: T + 60_000, watermark: T + 120_000 };
        let text = late.to_string();
        for needle in [
            "field `occurred_at`: 2026-01-01T00:00:01.500Z is late",
            "ended at 2026-01-01T00:01:00.000Z",
            "closed through 2026-01-01T00:02:00.000Z",
            "analyze.allowed_lateness",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
    }

    #[test]
    fn forgetting_the_future_brings_the_watermark_back() {
        let mut w: Windows<u8, Sum> = Windows::new(spec());
        w.add(1, 100, &1).unwrap();
        w.add(1, 4_000_000_000_000, &1).unwrap();
        assert!(w.watermark().unwrap() > 1_000_000);
        assert_eq!(w.forget_after(1_000), 1);
        assert_eq!(w.watermark(), Some(1_000 - spec().allowed_lateness_ms));
        // Events after the real ones are on time again.
        w.add(1, 990, &1).unwrap();
    }

    #[test]
    fn idle_advance_closes_windows_without_new_events() {
        let mut w: Windows<&str, Sum> = Windows::new(spec());
        w.add("a", 10, &1).unwrap();
        assert!(w.close_all().is_empty());
        w.advance_idle(500);
        let ends: Vec<i64> = w.close_all().iter().map(|c| c.end).collect();
        assert_eq!(ends, [60, 120, 180, 240, 300]);
        assert_eq!(w.pane_count(), 0, "panes dropped once no window needs them");
    }

    /// Brute force: every window end (multiple of slide) whose window holds
    /// at least one non-late event, recomputed from the raw events.
    fn brute(
        spec: WindowSpec,
        events: &[(u8, i64, i64)],
        accepted: &[bool],
        closed_through: i64,
    ) -> Vec<(u8, i64, Sum)> {
        let mut out = std::collections::BTreeMap::new();
        for (i, &(k, t, v)) in events.iter().enumerate() {
            if !accepted[i] {
                continue;
            }
            let first = spec.first_window_end(t);
            let mut end = first;
            while end < first + spec.size_ms && end <= closed_through {
                let e: &mut Sum = out.entry((end, k)).or_default();
                e.add(&v);
                end += spec.slide_ms;
            }
        }
        out.into_iter().map(|((end, k), s)| (k, end, s)).collect()
    }

    proptest! {
        #[test]
        fn closed_windows_match_brute_force(
            events in proptest::collection::vec((0u8..3, 0i64..3000, -5i64..50), 1..200),
            size_panes in 1i64..6, slide in prop::sample::select(vec![10i64, 60, 100]), lateness in 0i64..200,
        ) {
            let spec = WindowSpec::new(size_panes * slide, slide, lateness).unwrap();
            let mut w: Windows<u8, Sum> = Windows::new(spec);
            let mut closed = Vec::new();
            let mut accepted = Vec::new();
            for (i, &(k, t, v)) in events.iter().enumerate() {
                accepted.push(w.add(k, t, &v).is_ok());
                if i % 7 == 0 {
                    closed.extend(w.close_all());
                }
            }
            w.advance_idle(10_000);
            closed.extend(w.close_all());
            let through = w.clock.closed_through.unwrap();
            let got: Vec<(u8, i64, Sum)> = {
                let mut v: Vec<_> = closed.into_iter().map(|c| {
                    prop_assert_eq!(c.end - c.start, spec.size_ms);
                    Ok((c.key, c.end, c.agg))
                }).collect::<Result<_, TestCaseError>>()?;
                v.sort_by_key(|(k, e, _)| (*e, *k));
                v
            };
            let want = brute(spec, &events, &accepted, through);
            prop_assert_eq!(got, want);
            // Late events are exactly those behind an already-closed window.
            prop_assert!(accepted[0]);
        }

        #[test]
        fn closing_order_is_by_end_then_key(events in proptest::collection::vec((0u8..4, 0i64..2000), 1..100)) {
            let mut w: Windows<u8, Sum> = Windows::new(WindowSpec::new(120, 60, 0).unwrap());
            for &(k, t) in &events {
                let _ = w.add(k, t, &1);
            }
            w.advance_idle(5000);
            let c = w.close_all();
            let order: Vec<(i64, u8)> = c.iter().map(|c| (c.end, c.key)).collect();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(order, sorted);
        }
    }
}
