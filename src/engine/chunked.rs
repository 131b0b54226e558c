//! A queue kept in chunks of fixed size: appending never moves what is already there.
//!
//! Each organisation's retained events were one `VecDeque`, which the syncer appends to under
//! the log's write lock. When it doubled, the copy of every event held that lock, and so every
//! answer and event of the batch, for tens of milliseconds (BENCHMARKS.md, history).

use std::collections::VecDeque;

/// Items per chunk.
const CHUNK: usize = 4096;

/// A first-in, first-out queue in chunks of [`CHUNK`] items.
#[derive(Debug)]
pub(crate) struct ChunkedQueue<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedQueue<T> {
    /// Items in the queue.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `item`, starting a new chunk when the last is full.
    pub(crate) fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push_back(item),
            _ => {
                let mut chunk = VecDeque::with_capacity(CHUNK);
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// The oldest item.
    pub(crate) fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    /// Takes the oldest item out, dropping its chunk once that is empty.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.pop_front();
        if first.is_empty() {
            self.chunks.pop_front();
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Every item, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The items from the first for which `before` is false, oldest first. The queue must be
    /// partitioned by `before` (true for a prefix, as for items in sequence order): the chunk
    /// and the place in it are found by binary search.
    pub(crate) fn iter_from(&self, before: impl Fn(&T) -> bool) -> impl Iterator<Item = &T> {
        let chunk = self
            .chunks
            .partition_point(|c| c.back().is_some_and(&before));
        let start = self
            .chunks
            .get(chunk)
            .map_or(0, |c| c.partition_point(&before));
        self.chunks
            .range(chunk..)
            .enumerate()
            .flat_map(move |(i, c)| c.range(if i == 0 { start } else { 0 }..))
    }
}

impl<T> Extend<T> for ChunkedQueue<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push_back(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_chunks_and_pops_from_the_front() {
        let mut q = ChunkedQueue::default();
        q.extend(0..3 * CHUNK + 5);
        assert_eq!(q.len(), 3 * CHUNK + 5);
        assert!(q.iter().copied().eq(0..3 * CHUNK + 5));
        for expected in 0..CHUNK + 7 {
            assert_eq!(q.pop_front(), Some(expected));
        }
        assert_eq!(q.front(), Some(&(CHUNK + 7)));
        assert_eq!(q.chunks.len(), 3, "the emptied chunk is dropped");
        assert!(q.iter().copied().eq(CHUNK + 7..3 * CHUNK + 5));
        while q.pop_front().is_some() {}
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn iter_from_starts_at_the_first_item_not_before() {
        let mut q = ChunkedQueue::default();
        q.extend(0..2 * CHUNK + 10);
        for _ in 0..100 {
            q.pop_front();
        }
        for after in [
            0,
            99,
            100,
            101,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK + 9,
            5 * CHUNK,
        ] {
            let from: Vec<usize> = q.iter_from(|&i| i < after).copied().collect();
            let expected: Vec<usize> = (after.max(100)..2 * CHUNK + 10).collect();
            assert_eq!(from, expected, "from {after}");
        }
    }
}
