//! Record framing: `[payload length: u32 LE][crc32 of length and payload: u32 LE][payload]`, and
//! the scan that tells a torn tail (dropped) from damage in the middle (refused).

/// Bytes before each payload.
pub(crate) const HEADER: usize = 8;
/// Largest payload a record may hold; anything longer is damage, not data.
pub(crate) const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Appends one framed record holding `payload` to `out`.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    // The sequencer never builds a batch anywhere near 4 GiB (MAX_BATCH bounded commands).
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(len: &[u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// The payload of the record at the start of `buf`, and the record's whole length, if a complete
/// record with a matching checksum is there.
fn record_at(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len_bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let crc_bytes: [u8; 4] = buf.get(4..HEADER)?.try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let payload = buf.get(HEADER..HEADER + len)?;
    (checksum(&len_bytes, payload) == u32::from_le_bytes(crc_bytes))
        .then_some((payload, HEADER + len))
}

/// How a scan of a file's records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Every byte belongs to a whole, valid record.
    Clean,
    /// From `at` to the end only zeros: space the journal reserved ahead of its writes, so that
    /// a sync need not also write the file's new size. Nothing was written there.
    Reserved {
        /// Offset of the first reserved byte.
        at: usize,
    },
    /// From `at` to the end nothing valid follows: a write cut short (or damaged) by a crash.
    Torn {
        /// Offset of the first bad byte.
        at: usize,
    },
    /// A bad record at `at` is followed by a valid one at `next`: the middle is damaged.
    Damaged {
        /// Offset of the bad record.
        at: usize,
        /// Offset of a later valid record.
        next: usize,
    },
}

/// Every valid record's payload from the start of `buf`, and how the scan ended.
pub(crate) fn scan(buf: &[u8]) -> (Vec<&[u8]>, End) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match record_at(&buf[at..]) {
            Some((payload, len)) => {
                records.push(payload);
                at += len;
            }
            None if buf[at..].iter().all(|&b| b == 0) => {
                // Not even a record's length reached the disk here: reserved space, not damage.
                return (records, End::Reserved { at });
            }
            None => {
                // Records are written one after another, each synced before the next is written, so
                // a crash can only spoil the last one. A valid record after a bad one means the
                // damage is not a torn write, and dropping it would lose acknowledged changes.
                let end = match (at + 1..buf.len()).find(|&o| record_at(&buf[o..]).is_some()) {
                    Some(next) => End::Damaged { at, next },
                    None => End::Torn { at },
                };
                return (records, end);
            }
        }
    }
    (records, End::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame(p, &mut out);
        }
        out
    }

    const PAYLOADS: [&[u8]; 3] = [
        b"first record",
        b"second, a little longer",
        b"third and last",
    ];

    #[test]
    fn whole_records_read_back_clean() {
        let buf = file(&PAYLOADS);
        assert_eq!(scan(&buf), (PAYLOADS.to_vec(), End::Clean));
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_drops_only_that_record() {
        let buf = file(&PAYLOADS);
        let last = buf.len() - (HEADER + PAYLOADS[2].len());
        for cut in last..buf.len() {
            let (records, end) = scan(&buf[..cut]);
            assert_eq!(records, PAYLOADS[..2].to_vec(), "cut at {cut}");
            let expected = if cut == last {
                End::Clean
            } else {
                End::Torn { at: last }
            };
            assert_eq!(end, expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_last_record_drops_it_and_is_never_misread() {
        let buf = file(&PAYLOADS);
        let last = buf.len() - (HEADER + PAYLOADS[2].len());
        for byte in last..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let (records, end) = scan(&bad);
                assert_eq!(records, PAYLOADS[..2].to_vec(), "byte {byte} bit {bit}");
                assert_eq!(end, End::Torn { at: last }, "byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_an_earlier_record_is_damage_not_a_torn_tail() {
        let buf = file(&PAYLOADS);
        let second = HEADER + PAYLOADS[0].len();
        let third = second + HEADER + PAYLOADS[1].len();
        for byte in second..third {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let (records, end) = scan(&bad);
                assert_eq!(records, PAYLOADS[..1].to_vec(), "byte {byte} bit {bit}");
                assert_eq!(
                    end,
                    End::Damaged {
                        at: second,
                        next: third
                    },
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn zeros_after_the_last_record_are_reserved_space() {
        // Zeros the journal wrote ahead, or a file extended by a crash before its data reached
        // the disk: either way no record was written there, so nothing is dropped.
        let mut buf = file(&PAYLOADS);
        let end = buf.len();
        buf.extend_from_slice(&[0; 100]);
        assert_eq!(scan(&buf), (PAYLOADS.to_vec(), End::Reserved { at: end }));
        // A record cut short before zeros is still a torn tail.
        let mut torn = file(&PAYLOADS);
        torn.truncate(end - 3);
        torn.extend_from_slice(&[0; 100]);
        let last = end - (HEADER + PAYLOADS[2].len());
        assert_eq!(
            scan(&torn),
            (PAYLOADS[..2].to_vec(), End::Torn { at: last })
        );
    }
}
