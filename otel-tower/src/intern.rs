//! Bounded, lock-free tables of values interned once and read on every call.
//!
//! Every call looks its method and host up; with a lock, concurrent calls on
//! different cores would contend on the lock's cache line even though the
//! tables almost never change. Here a lookup is a few atomic loads, and an
//! insert claims an empty slot with one compare-and-swap. Entries live as long
//! as the table and are never replaced, so a reader can hand out references
//! that live as long as the table: `&'static` ones for the process-wide tables
//! of leaked names.

use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// An open-addressing table with linear probing: `cap` entries at most, in
/// twice as many slots, so probes stay short.
pub(crate) struct InternTable<V: 'static> {
    slots: Box<[AtomicPtr<Entry<V>>]>,
    len: AtomicUsize,
    cap: usize,
    /// Random per table, so colliding keys cannot be chosen in advance.
    seed: u64,
    /// The table owns its values and hands out shared references from any
    /// thread: it is `Send` when `V` is, `Sync` when `V` is `Send + Sync`
    /// (raw atomic pointers alone would make it both, always).
    _owns: PhantomData<(Box<V>, std::sync::Mutex<V>)>,
}

struct Entry<V> {
    key: Box<str>,
    value: V,
}

impl<V: Send + Sync + 'static> InternTable<V> {
    /// A table for at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        let slots = (cap * 2).next_power_of_two().max(2);
        InternTable {
            slots: (0..slots)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            len: AtomicUsize::new(0),
            cap,
            seed: std::hash::RandomState::new().hash_one(0x5eed_u64),
            _owns: PhantomData,
        }
    }

    fn start(&self, key: &str) -> usize {
        (hash(self.seed, key.as_bytes()) as usize) & (self.slots.len() - 1)
    }

    /// The value interned for `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_with_slot(key).map(|(_, v)| v)
    }

    /// The value interned for `key`, and its slot: [`InternTable::at`]
    /// finds it again from there without hashing the key.
    pub fn get_with_slot(&self, key: &str) -> Option<(usize, &V)> {
        let mask = self.slots.len() - 1;
        let mut i = self.start(key);
        for _ in 0..self.slots.len() {
            let entry = self.slots[i].load(Ordering::Acquire);
            if entry.is_null() {
                return None;
            }
            // SAFETY: a non-null slot points to an entry that stays alive and
            // unchanged until the table is dropped.
            let entry = unsafe { &*entry };
            if *entry.key == *key {
                return Some((i, &entry.value));
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The value in `slot`, as returned by [`InternTable::get_with_slot`]
    /// (an entry never leaves its slot).
    pub fn at(&self, slot: usize) -> Option<&V> {
        let entry = self.slots.get(slot)?.load(Ordering::Acquire);
        // SAFETY: as in `get_with_slot`.
        (!entry.is_null()).then(|| unsafe { &(*entry).value })
    }

    /// Interns `value` under `key` unless the key is present or the table is
    /// full; returns the value now interned for `key`, if any.
    pub fn insert(&self, key: &str, value: impl FnOnce() -> V) -> Option<&V> {
        if let Some(v) = self.get(key) {
            return Some(v);
        }
        // A full table is the steady state under a flood of new keys: check
        // without writing the shared counter first.
        if self.len.load(Ordering::Relaxed) >= self.cap {
            return None;
        }
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.len.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let entry = Box::into_raw(Box::new(Entry {
            key: key.into(),
            value: value(),
        }));
        let mask = self.slots.len() - 1;
        let mut i = self.start(key);
        for _ in 0..self.slots.len() {
            match self.slots[i].compare_exchange(
                ptr::null_mut(),
                entry,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                // SAFETY: just stored; lives until the table is dropped.
                Ok(_) => return Some(unsafe { &(*entry).value }),
                Err(other) => {
                    // SAFETY: as in `get`.
                    let other = unsafe { &*other };
                    if *other.key == *key {
                        // Another thread interned the same key first.
                        self.len.fetch_sub(1, Ordering::Relaxed);
                        // SAFETY: ours was never shared.
                        drop(unsafe { Box::from_raw(entry) });
                        return Some(&other.value);
                    }
                }
            }
            i = (i + 1) & mask;
        }
        // Unreachable while `cap` < slots, kept safe regardless.
        self.len.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: ours was never shared.
        drop(unsafe { Box::from_raw(entry) });
        None
    }

    /// Whether no more entries fit.
    pub fn is_full(&self) -> bool {
        self.len.load(Ordering::Relaxed) >= self.cap
    }

    /// How many entries are interned.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

/// A word-at-a-time multiplicative hash: the keys are short paths and host
/// names, and a lookup runs on every call. The tail is read as one
/// overlapping word rather than copied into a buffer: a copy of a few bytes
/// followed by a wide read stalls on store forwarding.
fn hash(seed: u64, key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&key[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let half = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&key[i..i + 4]);
        u64::from(u32::from_le_bytes(w))
    };
    let len = key.len();
    // The length is mixed in, so keys that differ only by an overlapped
    // tail still hash apart most of the time (equal keys are compared anyway).
    let mut h = seed ^ (len as u64).wrapping_mul(K);
    if len >= 8 {
        let mut i = 0;
        while i + 8 <= len {
            h = mix(h, word(i));
            i += 8;
        }
        if i < len {
            h = mix(h, word(len - 8));
        }
    } else if len >= 4 {
        h = mix(h, half(0) | half(len - 4) << 32);
    } else if len > 0 {
        let byte = |i: usize| u64::from(key[i]);
        h = mix(h, byte(0) | byte(len / 2) << 8 | byte(len - 1) << 16);
    }
    h ^ (h >> 32)
}

impl<V: 'static> Drop for InternTable<V> {
    fn drop(&mut self) {
        for slot in self.slots.iter_mut() {
            let entry = *slot.get_mut();
            if !entry.is_null() {
                // SAFETY: every non-null slot owns its entry; `&mut self`
                // means no reader is left.
                drop(unsafe { Box::from_raw(entry) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{InternTable, hash};

    #[test]
    fn hash_reads_every_byte() {
        for len in 0..=40usize {
            let key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let base = hash(7, &key);
            for i in 0..len {
                let mut changed = key.clone();
                changed[i] ^= 0x20;
                assert_ne!(hash(7, &changed), base, "len {len}, byte {i}");
            }
            // A longer key with the same prefix is another key.
            let mut longer = key.clone();
            longer.push(b'a');
            assert_ne!(hash(7, &longer), base, "len {len}");
        }
    }

    #[test]
    fn keys_of_every_length_are_found() {
        let t = InternTable::new(64);
        let keys: Vec<String> = (0..40)
            .map(|n| "/pkg.Svc/Method".repeat(3)[..n].to_string())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.insert(k, || i), Some(&i));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.get(k), Some(&i), "{k:?}");
            let (slot, _) = t.get_with_slot(k).unwrap();
            assert_eq!(t.at(slot), Some(&i), "{k:?} from its slot");
        }
        assert_eq!(t.at(usize::MAX), None);
    }

    #[test]
    fn interns_up_to_the_cap() {
        let t = InternTable::new(3);
        assert_eq!(t.get("a"), None);
        assert_eq!(t.insert("a", || 1), Some(&1));
        assert_eq!(t.insert("a", || 2), Some(&1), "first value wins");
        assert_eq!(t.insert("b", || 2), Some(&2));
        assert_eq!(t.insert("c", || 3), Some(&3));
        assert_eq!(t.insert("d", || 4), None, "full");
        assert_eq!(t.get("d"), None);
        assert_eq!(
            (t.get("a"), t.get("b"), t.get("c")),
            (Some(&1), Some(&2), Some(&3))
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn concurrent_inserts_agree() {
        let t = std::sync::Arc::new(InternTable::new(64));
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    // What each insert returned, by key.
                    let mut seen = [None; 50];
                    for k in 0..100 {
                        let got = *t.insert(&format!("k{}", k % 50), || n).unwrap();
                        let first = *seen[k % 50].get_or_insert(got);
                        assert_eq!(got, first, "one key, one value");
                    }
                    seen
                })
            })
            .collect();
        let seen: Vec<_> = threads.into_iter().map(|th| th.join().unwrap()).collect();
        assert_eq!(t.len(), 50);
        for k in 0..50 {
            let interned = *t.get(&format!("k{k}")).unwrap();
            // Every thread was handed the value that stayed.
            for s in &seen {
                assert_eq!(s[k], Some(interned), "k{k}");
            }
        }
    }
}
