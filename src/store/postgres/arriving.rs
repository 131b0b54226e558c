//! A snapshot row's body read while it is still arriving: the fetch appends it slice by slice,
//! and the snapshot's sections decode as soon as their bytes are in, so fetching a large row and
//! decoding it overlap instead of following one another.

use std::sync::{Condvar, Mutex, PoisonError};

use crate::store::io::ReadAt;

/// A body of known length, filled from its start.
#[derive(Debug)]
pub(super) struct Arriving {
    len: u64,
    state: Mutex<State>,
    more: Condvar,
}

#[derive(Debug)]
struct State {
    bytes: Vec<u8>,
    /// Why no more bytes will come before the end, if so.
    failed: Option<String>,
}

impl Arriving {
    /// An empty body that will hold `len` bytes.
    pub(super) fn new(len: u64) -> Self {
        Self {
            len,
            state: Mutex::new(State {
                bytes: Vec::with_capacity(usize::try_from(len).unwrap_or(0)),
                failed: None,
            }),
            more: Condvar::new(),
        }
    }

    /// Appends the next bytes; more than the length announced is a failure.
    pub(super) fn push(&self, slice: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.bytes.len() as u64 + slice.len() as u64 > self.len {
            state.failed = Some("the row is longer than its length said".into());
        } else {
            state.bytes.extend_from_slice(slice);
        }
        self.more.notify_all();
    }

    /// Says no more bytes will come: readers waiting for them fail with `why`.
    pub(super) fn fail(&self, why: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.failed.get_or_insert(why);
        self.more.notify_all();
    }
}

impl ReadAt for Arriving {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }

    /// Waits until `offset..offset + buf.len()` has arrived, then copies it.
    fn read_bytes_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while (state.bytes.len() as u64) < end {
            if let Some(why) = &state.failed {
                return Err(std::io::Error::other(why.clone()));
            }
            state = self
                .more
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        buf.copy_from_slice(&state.bytes[offset as usize..end as usize]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_reader_waits_for_the_bytes_it_asks_for_and_gets_them_in_order() {
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let arriving = Arc::new(Arriving::new(body.len() as u64));
        let reader = {
            let arriving = arriving.clone();
            std::thread::spawn(move || {
                let mut tail = vec![0; 1000];
                arriving.read_bytes_at(&mut tail, 9_000).map(|()| tail)
            })
        };
        for slice in body.chunks(777) {
            arriving.push(slice);
        }
        assert_eq!(reader.join().unwrap().unwrap(), body[9_000..]);
        let mut all = vec![0; 10_000];
        arriving.read_bytes_at(&mut all, 0).expect("all arrived");
        assert_eq!(all, body);
        let mut past = [0; 2];
        assert!(arriving.read_bytes_at(&mut past, 9_999).is_err());
    }

    #[test]
    fn a_fetch_that_fails_releases_the_readers_waiting_with_its_reason() {
        let arriving = Arc::new(Arriving::new(100));
        arriving.push(&[1; 40]);
        let reader = {
            let arriving = arriving.clone();
            std::thread::spawn(move || {
                let mut buf = [0; 20];
                arriving.read_bytes_at(&mut buf, 50)
            })
        };
        arriving.fail("the database went away".into());
        let err = reader.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("went away"), "{err}");
        let mut head = [0; 40];
        arriving
            .read_bytes_at(&mut head, 0)
            .expect("what arrived is still read");
        assert_eq!(head, [1; 40]);
    }
}
