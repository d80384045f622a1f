//! A FIFO bounded by the bytes it holds: when full, the oldest entries make room.

use std::collections::VecDeque;

/// A queue of items with known sizes, at most `capacity` bytes in total.
#[derive(Debug)]
pub struct ByteQueue<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    capacity: usize,
}

impl<T> ByteQueue<T> {
    /// An empty queue holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        ByteQueue {
            items: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Appends an item, dropping the oldest ones while the total exceeds the capacity; an
    /// item larger than the whole capacity is dropped itself. Returns the (count, bytes)
    /// dropped.
    pub fn push(&mut self, item: T, size: usize) -> (usize, usize) {
        if size > self.capacity {
            return (1, size);
        }
        let mut dropped = (0, 0);
        while self.bytes + size > self.capacity {
            match self.items.pop_front() {
                Some((_, s)) => {
                    self.bytes -= s;
                    dropped.0 += 1;
                    dropped.1 += s;
                }
                None => break,
            }
        }
        self.items.push_back((item, size));
        self.bytes += size;
        dropped
    }

    /// Removes the oldest item.
    pub fn pop(&mut self) -> Option<(T, usize)> {
        let (item, size) = self.items.pop_front()?;
        self.bytes -= size;
        Some((item, size))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_oldest_beyond_the_bound() {
        let mut q = ByteQueue::new(100);
        assert_eq!(q.push("a", 40), (0, 0));
        assert_eq!(q.push("b", 40), (0, 0));
        assert_eq!(q.push("c", 40), (1, 40));
        assert_eq!(q.bytes(), 80);
        assert_eq!(q.pop().map(|p| p.0), Some("b"));
        assert_eq!(q.push("huge", 101), (1, 101));
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().map(|p| p.0), Some("c"));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }
}
