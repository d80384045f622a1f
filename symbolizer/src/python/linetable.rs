//! Line numbers from a code object's `co_linetable`: the byte pairs of 3.10 (PEP 626) and
//! the location table of 3.11+ (`Objects/locations.md` in CPython).

/// The line of the instruction at byte offset `offset` (2 x `f_lasti`) in a 3.10 table.
pub fn line_pep626(table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut addr = 0u64;
    for pair in table.chunks_exact(2) {
        let end = addr + u64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != -128 {
            line += i64::from(delta);
        }
        if (addr..end).contains(&offset) {
            return (delta != -128).then(|| u32::try_from(line).ok()).flatten();
        }
        addr = end;
    }
    None
}

/// The line of the code unit `index` in a 3.11+ location table.
pub fn line_locations(table: &[u8], first_line: u32, index: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut addr = 0u64;
    let mut bytes = table.iter().copied();
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            // Entries start with bit 7 set; anything else is a table we misread.
            return None;
        }
        let code = (head >> 3) & 15;
        let end = addr + u64::from(head & 7) + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += svarint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                true
            }
            13 => {
                line += svarint(&mut bytes)?;
                true
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
                true
            }
            _ => {
                bytes.next()?;
                true
            }
        };
        if (addr..end).contains(&index) {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
        addr = end;
    }
    None
}

/// 6-bit chunks, low first; bit 6 says another follows.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut b = bytes.next()?;
    let mut value = u64::from(b & 63);
    let mut shift = 0;
    while b & 64 != 0 {
        b = bytes.next()?;
        shift += 6;
        if shift >= 64 {
            return None;
        }
        value |= u64::from(b & 63) << shift;
    }
    Some(value)
}

/// A varint with the sign in its low bit.
fn svarint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let v = varint(bytes)?;
    let magnitude = i64::try_from(v >> 1).ok()?;
    Some(if v & 1 != 0 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep626_pairs_give_each_range_its_line() {
        // [0, 6) line 10, [6, 10) no line, [10, 14) line 12.
        let table = [6, 0, 4, 0x80, 4, 2];
        assert_eq!(line_pep626(&table, 10, 0), Some(10));
        assert_eq!(line_pep626(&table, 10, 5), Some(10));
        assert_eq!(line_pep626(&table, 10, 6), None);
        assert_eq!(line_pep626(&table, 10, 12), Some(12));
        assert_eq!(line_pep626(&table, 10, 14), None);
    }

    #[test]
    fn location_entries_of_every_form() {
        let table = [
            // one-line form, +1 line, 2 code units: [0, 2) line 21
            0x80 | (11 << 3) | 1,
            0,
            0,
            // short form, same line, 1 unit: [2, 3) line 21
            0x80 | (3 << 3),
            0,
            // no location, 1 unit: [3, 4)
            0x80 | (15 << 3),
            // no column, line -3 (svarint 7), 1 unit: [4, 5) line 18
            0x80 | (13 << 3),
            7,
            // long form, line +40 (svarint 80 = 0b1_010000: two chunks), 3 units: [5, 8)
            0x80 | (14 << 3) | 2,
            64 | (80 & 63),
            80 >> 6,
            0,
            1,
            2,
        ];
        assert_eq!(line_locations(&table, 20, 0), Some(21));
        assert_eq!(line_locations(&table, 20, 2), Some(21));
        assert_eq!(line_locations(&table, 20, 3), None);
        assert_eq!(line_locations(&table, 20, 4), Some(18));
        assert_eq!(line_locations(&table, 20, 7), Some(58));
        assert_eq!(line_locations(&table, 20, 8), None);
        // A table cut short does not panic.
        assert_eq!(line_locations(&table[..9], 20, 7), None);
    }
}
