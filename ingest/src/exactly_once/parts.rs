//! Attribution anchors moved out of memory: immutable parts on disk, one
//! kind each (impressions or clicks), read through mmap.
//!
//! ```text
//!  seal commits ──► spill_if_due: `entries` anchors or more in memory?
//!                     1. write lock: memory's maps become a frozen part (still answering)
//!                     2. no lock: each kind's part written, sorted, and mapped
//!                     3. write lock: the frozen part is replaced by the mapped ones
//!                     4. trailing parts of like size merged (newest wins), expired anchors dropped
//!                     5. the part with most expired records rewritten without them, once they are half of it
//!
//!  part-N.attr   header │ anchors: (id hash, ts, scope hash), 24 B, sorted by id hash
//!                       │ touches: (touch key, ts, end of id in its block), 20 B, sorted by (key, ts, id)
//!  part-N.heap   the touches' ids, one after another
//!  memory: a binary fuse filter of the id hashes (≈2.3 B an anchor); per 256 records
//!          a fence, a time sample, and where the block's ids start in the heap
//! ```
//!
//! Step 5 bounds what expired anchors cost: size-tiered merges put old and
//! new anchors in one part, which otherwise stays until its newest expires.
//!
//! A lookup by id takes memory first, then the parts newest first; a
//! last-touch lookup takes the latest touch of memory and every part.
//! Parts are a cache of what the segments hold: recovery empties the
//! directory and writes them again as it reads the segments back.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};
use xorf::{BinaryFuse16, Filter};

use super::index::{AttributionIndex, Live, Touch, Touches};

const MAGIC: &[u8; 8] = b"ADATTRP2";
/// Magic, kind, anchors, touches, oldest and newest ts, heap bytes, spare.
const HEADER: usize = 64;
/// id hash, ts, scope hash.
const ANCHOR: usize = 24;
/// touch key, ts, end of the touch's id in its block's stretch of the heap.
const TOUCH: usize = 20;
/// Records per fence: a lookup past the fences reads one block.
const FENCE: usize = 256;

/// A touch as a part stores it, without its id: (touch key, ts).
type TouchKey = (u64, i64);

/// Anchors out of memory.
pub(super) enum Part {
    /// Taken out of memory, being written: answers from its maps.
    /// `max_ts` by [`Touches`]: a part that could not be written still expires.
    Frozen {
        live: Arc<Live>,
        max_ts: [i64; 2],
    },
    Mapped(Box<Mapped>),
}

impl Part {
    /// The anchor of kind `which` with id hash `id`: (ts, scope hash).
    pub fn anchor(&self, which: Touches, id: u64) -> Option<(i64, u64)> {
        match self {
            Part::Frozen { live, .. } => match which {
                Touches::Impressions => live.impressions.get(&id).copied(),
                Touches::Clicks => live.clicks.get(&id).copied(),
            },
            Part::Mapped(m) => m.get(id),
        }
    }

    pub fn last_touch(&self, which: Touches, key: u64, lo: i64, hi: i64) -> Option<Touch> {
        match self {
            Part::Frozen { live, .. } => live.touches(which).last_touch(key, lo, hi),
            Part::Mapped(m) => m.last_touch(key, lo, hi),
        }
    }

    pub fn entries(&self, which: Touches) -> usize {
        match self {
            Part::Frozen { live, .. } => match which {
                Touches::Impressions => live.impressions.len(),
                Touches::Clicks => live.clicks.len(),
            },
            Part::Mapped(m) => m.anchors,
        }
    }

    /// The newest anchor or touch time it holds.
    pub fn max_ts(&self, which: Touches) -> i64 {
        match self {
            Part::Frozen { max_ts, .. } => max_ts[which as usize],
            Part::Mapped(m) => m.max_ts,
        }
    }

    /// Memory outside the page cache (a frozen part is in both kinds'
    /// lists and counted under impressions).
    fn memory_bytes(&self, which: Touches) -> usize {
        match self {
            Part::Frozen { live, .. } if which == Touches::Impressions => live.memory_bytes(),
            Part::Frozen { .. } => 0,
            Part::Mapped(m) => m.memory_bytes(),
        }
    }

    fn mapped(&self) -> Option<&Mapped> {
        match self {
            Part::Mapped(m) => Some(m.as_ref()),
            Part::Frozen { .. } => None,
        }
    }
}

/// One part's files, mapped, with its filter and fences in memory.
pub(super) struct Mapped {
    path: PathBuf,
    heap_path: PathBuf,
    map: Mmap,
    /// `None` when no touch has an id byte.
    heap: Option<Mmap>,
    anchors: usize,
    touches: usize,
    max_ts: i64,
    filter: Option<BinaryFuse16>,
    /// The id hash of every `FENCE`th anchor.
    id_fences: Vec<u64>,
    /// The ts of every `FENCE`th anchor: a sample random in time, anchors
    /// being in id-hash order (as the touch fences' ts are).
    anchor_ts: Vec<i64>,
    /// The key of every `FENCE`th touch.
    touch_fences: Vec<TouchKey>,
    /// Where the ids of every `FENCE` touches start in the heap.
    heap_starts: Vec<u64>,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

impl Mapped {
    fn anchor_at(&self, i: usize) -> (u64, i64, u64) {
        let at = HEADER + i * ANCHOR;
        (u64_at(&self.map, at), u64_at(&self.map, at + 8) as i64, u64_at(&self.map, at + 16))
    }

    fn touches_at(&self) -> usize {
        HEADER + self.anchors * ANCHOR
    }

    fn touch_key(&self, i: usize) -> TouchKey {
        let at = self.touches_at() + i * TOUCH;
        (u64_at(&self.map, at), u64_at(&self.map, at + 8) as i64)
    }

    /// End of touch `i`'s id, from where its block's ids start.
    fn touch_end(&self, i: usize) -> usize {
        u32_at(&self.map, self.touches_at() + i * TOUCH + 16) as usize
    }

    fn touch_id(&self, i: usize) -> &[u8] {
        let base = self.heap_starts.get(i / FENCE).map_or(0, |&b| b as usize);
        let start = if i.is_multiple_of(FENCE) { 0 } else { self.touch_end(i - 1) };
        let end = self.touch_end(i);
        self.heap.as_ref().and_then(|h| h.get(base + start..base + end)).unwrap_or_default()
    }

    fn records(&self) -> usize {
        self.anchors + self.touches
    }

    /// Records older than `floor`, estimated from the time samples.
    fn expired(&self, floor: i64) -> usize {
        let share = |older: usize, samples: usize, of: usize| (older * of).checked_div(samples).unwrap_or(0);
        let anchors = self.anchor_ts.iter().filter(|&&ts| ts < floor).count();
        let touches = self.touch_fences.iter().filter(|f| f.1 < floor).count();
        share(anchors, self.anchor_ts.len(), self.anchors) + share(touches, self.touch_fences.len(), self.touches)
    }

    /// (ts, scope hash) of the anchor with id hash `id`.
    fn get(&self, id: u64) -> Option<(i64, u64)> {
        if !self.filter.as_ref()?.contains(&id) {
            return None;
        }
        let (mut lo, mut hi) = block(&self.id_fences, &id, self.anchors);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (found, ts, scope) = self.anchor_at(mid);
            match found.cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some((ts, scope)),
            }
        }
        None
    }

    fn last_touch(&self, key: u64, lo: i64, hi: i64) -> Option<Touch> {
        let target = (key, hi);
        let (from, to) = block(&self.touch_fences, &target, self.touches);
        let (mut a, mut b) = (from, to);
        while a < b {
            let mid = (a + b) / 2;
            if self.touch_key(mid) <= target { a = mid + 1 } else { b = mid }
        }
        let last = a.checked_sub(1)?;
        let (k, ts) = self.touch_key(last);
        (k == key && ts >= lo)
            .then(|| Touch { ts, id: CompactString::from(String::from_utf8_lossy(self.touch_id(last))) })
    }

    fn memory_bytes(&self) -> usize {
        let filter = self.filter.as_ref().map_or(0, |f| f.fingerprints.len() * 2);
        filter
            + (self.id_fences.len() + self.anchor_ts.len() + self.heap_starts.len()) * 8
            + self.touch_fences.len() * std::mem::size_of::<TouchKey>()
    }

    fn disk_bytes(&self) -> usize {
        self.map.len() + self.heap.as_ref().map_or(0, |h| h.len())
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // The last holder of a part replaced by a merge or expired removes
        // its files; a failure leaves files that the next open removes.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.heap_path);
    }
}

/// The records `lo..hi` that hold the last record `<= want`, or the
/// first `> want`, given the key of every `FENCE`th record of `len`.
fn block<K: PartialOrd>(fences: &[K], want: &K, len: usize) -> (usize, usize) {
    let b = fences.partition_point(|f| f <= want);
    (b.saturating_sub(1) * FENCE, (b * FENCE).min(len))
}

/// Writes a part: anchors in id order, then touches in key order.
struct PartWriter {
    path: PathBuf,
    heap_path: PathBuf,
    out: BufWriter<File>,
    heap: BufWriter<File>,
    which: Touches,
    anchors: usize,
    touches: usize,
    heap_len: u64,
    min_ts: i64,
    max_ts: i64,
    ids: Vec<u64>,
    id_fences: Vec<u64>,
    anchor_ts: Vec<i64>,
    touch_fences: Vec<TouchKey>,
    heap_starts: Vec<u64>,
}

impl PartWriter {
    fn create(path: PathBuf, which: Touches) -> std::io::Result<PartWriter> {
        let heap_path = path.with_extension("heap");
        // Read as well as written: the files are mapped once written.
        let create = |p: &Path| File::options().read(true).write(true).create(true).truncate(true).open(p);
        let mut out = BufWriter::with_capacity(1 << 20, create(&path)?);
        out.write_all(&[0u8; HEADER])?;
        let heap = BufWriter::with_capacity(1 << 20, create(&heap_path)?);
        Ok(PartWriter {
            path,
            heap_path,
            out,
            heap,
            which,
            anchors: 0,
            touches: 0,
            heap_len: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            ids: Vec::new(),
            id_fences: Vec::new(),
            anchor_ts: Vec::new(),
            touch_fences: Vec::new(),
            heap_starts: Vec::new(),
        })
    }

    fn seen(&mut self, ts: i64) {
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
    }

    /// The next anchor, in increasing id order, before any touch.
    fn anchor(&mut self, (id, ts, scope): (u64, i64, u64)) -> std::io::Result<()> {
        debug_assert!(self.touches == 0 && self.ids.last().is_none_or(|&last| last < id));
        if self.anchors.is_multiple_of(FENCE) {
            self.id_fences.push(id);
            self.anchor_ts.push(ts);
        }
        self.out.write_all(&id.to_le_bytes())?;
        self.out.write_all(&ts.to_le_bytes())?;
        self.out.write_all(&scope.to_le_bytes())?;
        self.ids.push(id);
        self.anchors += 1;
        self.seen(ts);
        Ok(())
    }

    /// The next touch, in increasing (key, ts, id) order.
    fn touch(&mut self, key: TouchKey, id: &[u8]) -> std::io::Result<()> {
        if self.touches.is_multiple_of(FENCE) {
            self.touch_fences.push(key);
            self.heap_starts.push(self.heap_len);
        }
        self.heap.write_all(id)?;
        self.heap_len += id.len() as u64;
        let block_start = self.heap_starts.last().copied().unwrap_or(0);
        // A block's ids are `FENCE` validated ids (at most 128 bytes each).
        let end = u32::try_from(self.heap_len - block_start)
            .map_err(|_| std::io::Error::other("attribution part: a block of touch ids over 4 GiB"))?;
        self.out.write_all(&key.0.to_le_bytes())?;
        self.out.write_all(&key.1.to_le_bytes())?;
        self.out.write_all(&end.to_le_bytes())?;
        self.touches += 1;
        self.seen(key.1);
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<Mapped> {
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        for v in [self.which as u64, self.anchors as u64, self.touches as u64] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.min_ts, self.max_ts] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        header.extend_from_slice(&self.heap_len.to_le_bytes());
        header.resize(HEADER, 0);
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let heap = self.heap.into_inner().map_err(|e| e.into_error())?;
        // SAFETY: the files are this process's own, written above and never
        // written again; they are removed only once no `Mapped` maps them.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file)? };
        #[allow(unsafe_code)]
        let heap = if self.heap_len == 0 { None } else { Some(unsafe { Mmap::map(&heap)? }) };
        let filter = if self.ids.is_empty() {
            None
        } else {
            Some(
                BinaryFuse16::try_from(&self.ids)
                    .map_err(|e| std::io::Error::other(format!("attribution part filter: {e}")))?,
            )
        };
        Ok(Mapped {
            path: self.path,
            heap_path: self.heap_path,
            map,
            heap,
            anchors: self.anchors,
            touches: self.touches,
            max_ts: self.max_ts,
            filter,
            id_fences: self.id_fences,
            anchor_ts: self.anchor_ts,
            touch_fences: self.touch_fences,
            heap_starts: self.heap_starts,
        })
    }
}

/// Writes the anchors of kind `which` of a frozen part.
fn write_frozen(live: &Live, which: Touches, path: PathBuf) -> std::io::Result<Mapped> {
    let mut anchors: Vec<(u64, i64, u64)> = match which {
        Touches::Impressions => live.impressions.iter().map(|(id, (ts, scope))| (*id, *ts, *scope)).collect(),
        Touches::Clicks => live.clicks.iter().map(|(id, (ts, scope))| (*id, *ts, *scope)).collect(),
    };
    anchors.sort_unstable_by_key(|a| a.0);
    let mut w = PartWriter::create(path, which)?;
    for a in anchors {
        w.anchor(a)?;
    }
    for e in live.touches(which).sorted() {
        w.touch((e.key, e.ts), e.id.as_bytes())?;
    }
    w.finish()
}

/// Merges parts of kind `which` given oldest first: one anchor per id (the
/// newest part's), every touch once, nothing older than `floor`.
fn merge(parts: &[&Mapped], which: Touches, floor: i64, path: PathBuf) -> std::io::Result<Mapped> {
    let mut w = PartWriter::create(path, which)?;
    // Cursors, newest part first, so that the first of equal ids wins.
    let mut at = vec![0usize; parts.len()];
    let newest_first: Vec<&Mapped> = parts.iter().rev().copied().collect();
    loop {
        let next = (0..newest_first.len())
            .filter(|&p| at[p] < newest_first[p].anchors)
            .min_by_key(|&p| newest_first[p].anchor_at(at[p]).0);
        let Some(p) = next else { break };
        let anchor = newest_first[p].anchor_at(at[p]);
        for (q, part) in newest_first.iter().enumerate() {
            while at[q] < part.anchors && part.anchor_at(at[q]).0 == anchor.0 {
                at[q] += 1;
            }
        }
        if anchor.1 >= floor {
            w.anchor(anchor)?;
        }
    }
    let mut at = vec![0usize; parts.len()];
    let mut last: Option<(TouchKey, Vec<u8>)> = None;
    loop {
        let next = (0..parts.len()).filter(|&p| at[p] < parts[p].touches).min_by(|&a, &b| {
            let (pa, pb) = (parts[a], parts[b]);
            (pa.touch_key(at[a]), pa.touch_id(at[a])).cmp(&(pb.touch_key(at[b]), pb.touch_id(at[b])))
        });
        let Some(p) = next else { break };
        let (key, id) = (parts[p].touch_key(at[p]), parts[p].touch_id(at[p]));
        at[p] += 1;
        if key.1 < floor || last.as_ref().is_some_and(|(k, i)| *k == key && i == id) {
            continue;
        }
        w.touch(key, id)?;
        last = Some((key, id.to_vec()));
    }
    w.finish()
}

/// Moving anchors out of memory once there are `entries` of them.
pub(super) struct AttributionSpill {
    dir: PathBuf,
    entries: usize,
    next: AtomicU64,
    /// One spill or merge at a time.
    work: Mutex<()>,
    /// Anchors written to parts since the process started.
    written: AtomicU64,
}

/// What the parts hold, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct AttributionPartStats {
    pub parts: u64,
    /// Anchors in parts (one in two parts until they merge counts twice).
    pub entries: u64,
    /// Filters, fences and parts being written.
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// Anchors written to parts since the process started (merges not counted).
    pub written: u64,
}

impl AttributionSpill {
    /// Parts in `dir`, which is not touched until [`AttributionSpill::clear_stale`]
    /// or the first spill.
    pub fn new(dir: &Path, entries: usize) -> AttributionSpill {
        AttributionSpill {
            dir: dir.to_path_buf(),
            entries: entries.max(1),
            next: AtomicU64::new(0),
            work: Mutex::new(()),
            written: AtomicU64::new(0),
        }
    }

    /// Creates the directory, or empties it of the parts of an earlier
    /// process. Only once that process is gone: recovery calls it, after
    /// the store has taken the data directory's lock, and before any part.
    pub fn clear_stale(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "attr" || e == "heap") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn next_path(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(self.dir.join(format!("part-{n:08}.attr")))
    }

    /// Moves the anchors in memory to parts if there are `entries` or more,
    /// then merges parts (size-tiered) and rewrites the part with the most
    /// expired records once they are half of it. Another caller's spill in progress
    /// makes this one return at once. On an error the anchors stay in a
    /// frozen part in memory, still answering, until they expire.
    pub fn spill_if_due(&self, index: &RwLock<AttributionIndex>) -> std::io::Result<()> {
        let Some(_work) = self.work.try_lock() else { return Ok(()) };
        if index.read().live.entries() >= self.entries {
            let (live, frozen) = {
                let mut x = index.write();
                let live = Arc::new(std::mem::take(&mut x.live));
                let max_ts = Touches::BOTH.map(|w| live.max_ts(w));
                let frozen = Arc::new(Part::Frozen { live: live.clone(), max_ts });
                for w in Touches::BOTH {
                    x.parts[w as usize].push(frozen.clone());
                }
                (live, frozen)
            };
            for which in Touches::BOTH {
                let mapped = write_frozen(&live, which, self.next_path()?)?;
                self.written.fetch_add(mapped.anchors as u64, Ordering::Relaxed);
                replace(&mut index.write().parts[which as usize], std::slice::from_ref(&frozen), Some(mapped));
            }
        }
        for which in Touches::BOTH {
            let stretch = to_merge(&index.read().parts[which as usize]);
            self.rewrite(index, which, &stretch)?;
            let stale = {
                let x = index.read();
                most_expired(&x.parts[which as usize], x.floor(which))
            };
            self.rewrite(index, which, &stale)?;
        }
        Ok(())
    }

    /// Replaces `parts` (contiguous, oldest first) with one part of their
    /// records at or after the floor.
    fn rewrite(&self, index: &RwLock<AttributionIndex>, which: Touches, parts: &[Arc<Part>]) -> std::io::Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        let floor = index.read().floor(which);
        let mapped: Vec<&Mapped> = parts.iter().filter_map(|p| p.mapped()).collect();
        let merged = merge(&mapped, which, floor, self.next_path()?)?;
        let merged = (merged.records() > 0).then_some(merged);
        replace(&mut index.write().parts[which as usize], parts, merged);
        Ok(())
    }

    pub fn stats(&self, index: &AttributionIndex) -> AttributionPartStats {
        let mut s = AttributionPartStats { written: self.written.load(Ordering::Relaxed), ..Default::default() };
        let mut seen: Vec<*const Part> = Vec::new();
        for which in Touches::BOTH {
            for p in &index.parts[which as usize] {
                s.entries += p.entries(which) as u64;
                s.memory_bytes += p.memory_bytes(which) as u64;
                if !seen.contains(&Arc::as_ptr(p)) {
                    seen.push(Arc::as_ptr(p));
                    s.parts += 1;
                }
                s.disk_bytes += p.mapped().map_or(0, Mapped::disk_bytes) as u64;
            }
        }
        s
    }
}

/// The parts a new part at the end should absorb: the mapped parts
/// before it that are not more than twice the size of what absorbs them.
fn to_merge(list: &[Arc<Part>]) -> Vec<Arc<Part>> {
    let Some(last) = list.last().and_then(|p| p.mapped()) else { return Vec::new() };
    let mut size = last.records();
    let mut from = list.len() - 1;
    while let Some(prev) = from.checked_sub(1).and_then(|i| list[i].mapped()) {
        if prev.records() > 2 * size {
            break;
        }
        from -= 1;
        size += prev.records();
    }
    if from + 1 == list.len() { Vec::new() } else { list[from..].to_vec() }
}

/// The mapped part with the most records older than `floor`, if they are
/// at least half of it: rewriting it alone halves it at least, so expired
/// records never take more than the live ones.
fn most_expired(list: &[Arc<Part>], floor: i64) -> Vec<Arc<Part>> {
    list.iter()
        .filter_map(|p| p.mapped().map(|m| (m.expired(floor), m.records(), p)))
        .filter(|(expired, records, _)| *expired > 0 && 2 * expired >= *records)
        .max_by_key(|(expired, ..)| *expired)
        .map(|(.., p)| vec![p.clone()])
        .unwrap_or_default()
}

/// Replaces the parts `old` (contiguous in `list` when chosen; expiry may
/// have dropped some since) with `new`, where the first of them still is.
fn replace(list: &mut Vec<Arc<Part>>, old: &[Arc<Part>], new: Option<Mapped>) {
    let Some(at) = list.iter().position(|p| old.iter().any(|o| Arc::ptr_eq(p, o))) else { return };
    list.retain(|p| !old.iter().any(|o| Arc::ptr_eq(p, o)));
    if let Some(m) = new {
        list.insert(at, Arc::new(Part::Mapped(Box::new(m))));
    }
}

#[cfg(test)]
mod tests {
    use super::super::index::{AnchorRef, h, touch_key};
    use super::*;
    use adstore_storage::EventType;

    /// An anchor as the test generates it: kind, ts, user, scope.
    type Gen = (bool, i64, Option<u8>, u8);

    fn anchors(batch: &[(String, Gen)]) -> Vec<AnchorRef<'_>> {
        const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
        const SCOPES: [&str; 3] = ["s0", "s1", "s2"];
        batch
            .iter()
            .map(|(id, (click, ts, user, scope))| AnchorRef {
                kind: if *click { EventType::Click } else { EventType::Impression },
                ts: *ts,
                id,
                key: h(id),
                scope: h(SCOPES[*scope as usize]),
                user_key: user.map(|u| USERS[u as usize]),
            })
            .collect()
    }

    /// Parts of many blocks (past the fences): every anchor is found by
    /// id and as the last touch of its user, and a missing id is not.
    #[test]
    fn large_parts_find_every_anchor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = AttributionSpill::new(dir.path(), 3_000);
        let index = RwLock::new(AttributionIndex::default());
        let batch: Vec<(String, Gen)> = (0..20_000)
            .map(|i| (format!("imp-{i}"), (i % 7 == 0, i as i64, Some((i % 4) as u8), (i % 3) as u8)))
            .collect();
        for chunk in batch.chunks(1_000) {
            index.write().insert_all(anchors(chunk));
            spill.spill_if_due(&index).expect("spill");
        }
        let x = index.read();
        assert!(x.live.entries() < 3_000 && spill.stats(&x).parts >= 2, "most anchors are in parts");
        for (id, (click, ts, ..)) in &batch {
            let found = if *click { x.click(h(id)).map(|a| a.0) } else { x.impression(h(id)).map(|a| a.0) };
            assert_eq!(found, Some(*ts), "{id}");
        }
        assert_eq!(x.impression(h("imp-none")), None);
        for (id, (click, ts, user, scope)) in batch.iter().rev().take(400) {
            let which = if *click { Touches::Clicks } else { Touches::Impressions };
            let key = touch_key(
                h(["u0", "u1", "u2", "u3"][user.unwrap_or(0) as usize]),
                h(["s0", "s1", "s2"][*scope as usize]),
            );
            let t = x.last_touch(which, key, *ts, *ts).expect("touch");
            assert_eq!((t.ts, t.id.as_str()), (*ts, id.as_str()));
        }
    }

    /// Parts whose anchors span the whole time range never expire whole;
    /// once most of a part is older than the floor, it is rewritten
    /// without them, and what is left still answers.
    #[test]
    fn expired_records_are_rewritten_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spill = AttributionSpill::new(dir.path(), 1_000);
        let index = RwLock::new(AttributionIndex::default());
        let batch: Vec<(String, Gen)> = (0..10_000)
            .map(|i| (format!("imp-{i}"), (false, (i * 7_919) % 10_000, Some((i % 4) as u8), (i % 3) as u8)))
            .collect();
        for chunk in batch.chunks(1_000) {
            index.write().insert_all(anchors(chunk));
            spill.spill_if_due(&index).expect("spill");
        }
        let live = |x: &AttributionIndex| {
            x.parts[Touches::Impressions as usize].iter().map(|p| p.entries(Touches::Impressions)).sum::<usize>()
        };
        assert_eq!(live(&index.read()), 10_000, "every anchor is in a part");
        index.write().expire(9_000, i64::MIN);
        assert!(live(&index.read()) > 5_000, "no part expired whole");
        for _ in 0..20 {
            spill.spill_if_due(&index).expect("spill");
        }
        let x = index.read();
        assert_eq!(live(&x), 1_000, "only the anchors at or after the floor are left");
        for (id, (_, ts, user, scope)) in batch.iter().filter(|(_, g)| g.1 >= 9_000) {
            assert_eq!(x.impression(h(id)).map(|a| a.0), Some(*ts), "{id}");
            let key = touch_key(
                h(["u0", "u1", "u2", "u3"][user.unwrap_or(0) as usize]),
                h(["s0", "s1", "s2"][*scope as usize]),
            );
            let t = x.last_touch(Touches::Impressions, key, *ts, *ts).expect("touch");
            assert_eq!((t.ts, t.id.as_str()), (*ts, id.as_str()));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the batches, spills, merges and expiries, an index with
        /// parts on disk answers every lookup whose window starts at or
        /// after the floors exactly as one held in memory.
        #[test]
        fn parts_answer_like_memory(
            batches in proptest::collection::vec(
                (proptest::collection::vec((proptest::bool::ANY, 0i64..200, proptest::option::of(0u8..4), 0u8..3), 0..30),
                 proptest::option::of(0i64..200)),
                1..25),
            spill_at in 1usize..40,
        ) {
            let dir = tempfile::tempdir().map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let spill = AttributionSpill::new(dir.path(), spill_at);
            spill.clear_stale().map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let on_disk = RwLock::new(AttributionIndex::default());
            let mut in_memory = AttributionIndex::default();
            let mut ids: Vec<String> = Vec::new();
            let (mut imp_floor, mut click_floor) = (i64::MIN, i64::MIN);
            for (batch, expire) in &batches {
                // Unique ids: an id indexed twice may answer either copy once one expired.
                let first = ids.len();
                let batch: Vec<(String, Gen)> =
                    batch.iter().enumerate().map(|(i, g)| (format!("id-{}", first + i), *g)).collect();
                ids.extend(batch.iter().map(|(id, _)| id.clone()));
                in_memory.insert_all(anchors(&batch));
                on_disk.write().insert_all(anchors(&batch));
                spill.spill_if_due(&on_disk).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
                if let Some(f) = expire {
                    (imp_floor, click_floor) = (imp_floor.max(*f), click_floor.max(f - 50));
                    in_memory.expire(*f, f - 50);
                    on_disk.write().expire(*f, f - 50);
                }
            }
            let on_disk = on_disk.read();
            for id in &ids {
                let keep = |ts: i64, floor: i64| ts >= floor;
                let want = in_memory.impression(h(id)).filter(|a| keep(a.0, imp_floor));
                proptest::prop_assert_eq!(on_disk.impression(h(id)).filter(|a| keep(a.0, imp_floor)), want);
                let want = in_memory.click(h(id)).filter(|a| keep(a.0, click_floor));
                proptest::prop_assert_eq!(on_disk.click(h(id)).filter(|a| keep(a.0, click_floor)), want);
            }
            for (which, floor) in [(Touches::Impressions, imp_floor), (Touches::Clicks, click_floor)] {
                for user in ["u0", "u1", "u2", "u3"] {
                    for scope in ["s0", "s1", "s2"] {
                        for (lo, hi) in [(0, 199), (50, 120), (100, 100), (150, 60)] {
                            let lo = lo.max(floor);
                            let key = touch_key(h(user), h(scope));
                            let got = on_disk.last_touch(which, key, lo, hi).map(|t| (t.ts, t.id));
                            let want = in_memory.last_touch(which, key, lo, hi).map(|t| (t.ts, t.id));
                            proptest::prop_assert_eq!(got, want);
                        }
                    }
                }
            }
            let stats = spill.stats(&on_disk);
            if ids.len() >= spill_at && batches.iter().all(|(_, expire)| expire.is_none()) {
                proptest::prop_assert!(stats.written > 0, "anchors went to parts");
            }
            // Only the parts listed are on disk: merged and expired ones are removed.
            let files = std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
            proptest::prop_assert_eq!(files as u64, 2 * stats.parts);
        }
    }
}
