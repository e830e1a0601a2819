//! A cache of verified answers keyed by height.
//!
//! The state at a height never changes, so a verified answer at height h stays true of h
//! forever: entries are never invalidated, only evicted, oldest height first, once the
//! cache holds more than its capacity.

use std::collections::BTreeMap;

/// Verified answers by `(height, query)`.
#[derive(Debug)]
pub struct HeightCache<K, V> {
    map: BTreeMap<(u64, K), V>,
    capacity: usize,
    hits: u64,
    misses: u64,
}

impl<K: Ord, V: Clone> HeightCache<K, V> {
    /// A cache of at most `capacity` answers (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            capacity,
            hits: 0,
            misses: 0,
        }
    }

    /// The answer to `query` at `height`, if cached.
    pub fn get(&mut self, height: u64, query: K) -> Option<V> {
        let v = self.map.get(&(height, query)).cloned();
        if v.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        v
    }

    /// Remembers an answer, evicting the oldest heights' answers beyond the capacity.
    pub fn insert(&mut self, height: u64, query: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        self.map.insert((height, query), value);
        while self.map.len() > self.capacity {
            self.map.pop_first();
        }
    }

    /// `(hits, misses)` so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// The number of cached answers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_heights_first() {
        let mut c = HeightCache::new(2);
        c.insert(5, "a", 1);
        c.insert(3, "a", 2);
        c.insert(7, "b", 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(3, "a"), None);
        assert_eq!(c.get(5, "a"), Some(1));
        assert_eq!(c.get(7, "b"), Some(3));
        assert_eq!(c.stats(), (2, 1));
        let mut off = HeightCache::new(0);
        off.insert(1, "a", 1);
        assert!(off.is_empty());
    }
}
