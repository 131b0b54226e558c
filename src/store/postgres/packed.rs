//! Snapshot row bodies as stored: compressed by the broker in independent zstd frames (one per
//! [`CHUNK`] of the body), so that a restart fetches a few times fewer bytes from the server and
//! unpacks the frames on every core.

use std::sync::Mutex;

use crate::store::StoreError;

/// `packing` of a row whose body is stored as written (rows of earlier builds).
pub(crate) const RAW: i16 = 0;
/// `packing` of a row whose body is zstd frames.
pub(crate) const ZSTD: i16 = 1;

/// Bytes of the body per frame: small enough that a restart keeps every core busy unpacking,
/// large enough that each frame's header and dictionary warm-up cost nothing.
const CHUNK: usize = 4 << 20;
/// zstd's fastest standard level: the writer pays for compression on its own thread, and a
/// higher level saves little on these bodies while slowing every snapshot.
const LEVEL: i32 = 1;
/// Most a stored body may say it unpacks to: a damaged frame header must not make a restart try
/// to allocate exabytes.
const MOST: u64 = 1 << 40;

/// A body's size as written and as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowBytes {
    /// Bytes of the snapshot format: what a restart decodes.
    pub raw: usize,
    /// Bytes the database holds.
    pub stored: usize,
}

/// `body` as zstd frames of up to [`CHUNK`] bytes each.
pub(crate) fn pack(body: &[u8]) -> Result<Vec<u8>, StoreError> {
    let failed =
        |e: std::io::Error| StoreError::Corrupt(format!("cannot compress a snapshot: {e}"));
    let mut compressor = zstd::bulk::Compressor::new(LEVEL).map_err(failed)?;
    let mut out = Vec::with_capacity(body.len() / 3);
    for chunk in body.chunks(CHUNK) {
        // Every frame records its own size (zstd's default), which `unpack` relies on.
        out.extend_from_slice(&compressor.compress(chunk).map_err(failed)?);
    }
    Ok(out)
}

/// The body of a row stored with `packing`, as it was written; `what` names the row in errors.
pub(crate) fn unpack<'a>(
    packing: i16,
    stored: &'a [u8],
    what: &str,
) -> Result<std::borrow::Cow<'a, [u8]>, StoreError> {
    match packing {
        RAW => Ok(std::borrow::Cow::Borrowed(stored)),
        ZSTD => unpack_frames(stored, what).map(std::borrow::Cow::Owned),
        other => Err(StoreError::Corrupt(format!(
            "{what} is stored in an unknown way ({other}); a newer broker wrote it"
        ))),
    }
}

/// Unpacks the frames of `stored` into one buffer, each frame on whichever thread is free.
fn unpack_frames(stored: &[u8], what: &str) -> Result<Vec<u8>, StoreError> {
    let damaged = |why: String| StoreError::Corrupt(format!("{what} cannot be unpacked: {why}"));
    let mut frames = Vec::new();
    let mut total = 0u64;
    let mut at = 0;
    while at < stored.len() {
        let rest = &stored[at..];
        let len = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|code| damaged(zstd::zstd_safe::get_error_name(code).to_string()))?;
        let size = match zstd::zstd_safe::get_frame_content_size(rest) {
            Ok(Some(size)) => size,
            Ok(None) | Err(_) => return Err(damaged(format!("frame at byte {at} has no size"))),
        };
        total += size;
        if total > MOST {
            return Err(damaged(format!("its frames say it holds {total} bytes")));
        }
        frames.push((&rest[..len], size as usize));
        at += len;
    }
    let mut body = vec![0u8; total as usize];
    let mut jobs = Vec::with_capacity(frames.len());
    let mut out = body.as_mut_slice();
    for (frame, size) in frames {
        let (here, rest) = out.split_at_mut(size);
        jobs.push((frame, here));
        out = rest;
    }
    let jobs = Mutex::new(jobs.into_iter());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    let mut decompressor =
                        zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
                    loop {
                        let job = jobs.lock().map_err(|e| e.to_string())?.next();
                        let Some((frame, here)) = job else {
                            return Ok(());
                        };
                        let written = decompressor
                            .decompress_to_buffer(frame, here)
                            .map_err(|e| e.to_string())?;
                        if written != here.len() {
                            return Err(format!(
                                "a frame holds {written} bytes, not the {} it says",
                                here.len()
                            ));
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err("unpacking panicked".into()))
        })
    })
    .map_err(damaged)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that compress somewhat, like a snapshot's names and notes.
    fn body(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7) % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn a_packed_body_of_many_frames_unpacks_to_what_was_written() {
        for len in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17] {
            let raw = body(len);
            let stored = pack(&raw).unwrap();
            assert!(stored.len() < raw.len().max(64), "{len}: {}", stored.len());
            assert_eq!(unpack(ZSTD, &stored, "row").unwrap().as_ref(), raw);
        }
    }

    #[test]
    fn a_raw_body_is_read_as_it_is() {
        let raw = body(100);
        assert!(matches!(
            unpack(RAW, &raw, "row").unwrap(),
            std::borrow::Cow::Borrowed(b) if b == raw
        ));
    }

    #[test]
    fn a_cut_or_damaged_or_unknown_body_is_refused_by_name() {
        let stored = pack(&body(2 * CHUNK)).unwrap();
        let err = unpack(
            ZSTD,
            &stored[..stored.len() - 10],
            "the row after 7 entries",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("the row after 7 entries cannot be unpacked"),
            "{err}"
        );
        let mut bad = stored.clone();
        bad[0] ^= 0xff;
        assert!(unpack(ZSTD, &bad, "row").is_err());
        let err = unpack(9, &stored, "the row").unwrap_err().to_string();
        assert!(err.contains("unknown way (9)"), "{err}");
    }
}
