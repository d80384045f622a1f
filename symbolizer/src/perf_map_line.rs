//! One line of a perf map: `START SIZE NAME`, START and SIZE hexadecimal (`0x` optional).
//! The writer is untrusted: lines are cut at a fixed length and names at a char boundary.

/// Longest name kept, in bytes; a longer one is cut (a 70 MB name once made every export
/// batch too big to send).
pub(crate) const NAME_CAP: usize = 2048;

/// Bytes of a line looked at: the name cap plus room for the two numbers.
pub(crate) const LINE_CAP: usize = NAME_CAP + 64;

/// A line that names code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) name: &'a str,
    /// The name was longer than the cap, or the line than `LINE_CAP`.
    pub(crate) cut: bool,
}

/// Why a line names nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Empty: not worth counting.
    Blank,
    NotUtf8,
    Malformed,
}

/// Parses the first bytes of one line (without its newline). `truncated` says the line
/// went on past `bytes`: a character cut in half at the end is then dropped, not an error.
pub(crate) fn parse(bytes: &[u8], truncated: bool) -> Result<Line<'_>, Skip> {
    let bytes = &bytes[..bytes.len().min(LINE_CAP)];
    let truncated = truncated || bytes.len() == LINE_CAP;
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // Only an incomplete character at the very end, where the line was cut.
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).map_err(|_| Skip::NotUtf8)?
        }
        Err(_) => return Err(Skip::NotUtf8),
    };
    if text.trim().is_empty() {
        return Err(Skip::Blank);
    }
    let hex = |s: &str| {
        let digits = s.strip_prefix("0x").unwrap_or(s);
        // from_str_radix takes a sign, which is no part of the format.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(digits, 16).ok()
    };
    let mut parts = text.splitn(3, ' ');
    let (Some(start), Some(size), Some(name)) = (
        parts.next().and_then(hex),
        parts.next().and_then(hex),
        parts.next().map(str::trim),
    ) else {
        return Err(Skip::Malformed);
    };
    if size == 0 || name.is_empty() {
        return Err(Skip::Malformed);
    }
    let (name, cut_name) = cut(name, NAME_CAP);
    Ok(Line {
        start,
        size,
        name,
        cut: truncated || cut_name,
    })
}

/// `s` cut to at most `cap` bytes at a char boundary, and whether it was cut.
fn cut(s: &str, cap: usize) -> (&str, bool) {
    if s.len() <= cap {
        return (s, false);
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_with_or_without_prefix_and_keeps_spaces_in_names() {
        assert_eq!(
            parse(
                b"7f0000001000 100 LazyCompile:~handler /app/server.js:10",
                false
            ),
            Ok(Line {
                start: 0x7f0000001000,
                size: 0x100,
                name: "LazyCompile:~handler /app/server.js:10",
                cut: false
            })
        );
        let l = parse(b"0x7f0000002000 0x40 Builtin:JSEntry  ", false).unwrap();
        assert_eq!(
            (l.start, l.size, l.name),
            (0x7f0000002000, 0x40, "Builtin:JSEntry")
        );
    }

    #[test]
    fn bad_lines_are_told_apart() {
        assert_eq!(parse(b"", false), Err(Skip::Blank));
        assert_eq!(parse(b"  ", false), Err(Skip::Blank));
        for bad in [
            &b"bogus line"[..],
            b"1000 10",
            b"1000 10 ",
            b"1000 0 zero-sized",
            b"-1000 10 signed",
            b"1000 +10 signed",
            b"10000000000000000 10 too-big",
        ] {
            assert_eq!(
                parse(bad, false),
                Err(Skip::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"1000 10 caf\xe9", false), Err(Skip::NotUtf8));
        assert_eq!(parse(b"10\xff00 10 f", false), Err(Skip::NotUtf8));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let mut line = b"1000 10 ".to_vec();
        line.extend(std::iter::repeat_n(b'a', NAME_CAP - 1));
        line.extend("é".as_bytes()); // two bytes straddling the cap
        line.extend(b"tail");
        let l = parse(&line, false).unwrap();
        assert!(l.cut);
        assert_eq!(l.name.len(), NAME_CAP - 1);
        // A line cut by the reader in the middle of a character is not "not UTF-8".
        let mut long = b"1000 10 ".to_vec();
        long.extend("é".repeat(100).bytes());
        long.push(0xc3); // the first byte of another é
        let l = parse(&long, true).unwrap();
        assert!(l.cut && l.name == "é".repeat(100));
        assert_eq!(parse(&long, false), Err(Skip::NotUtf8), "a complete line");
        // Exactly at the cap is not cut.
        let mut exact = b"1000 10 ".to_vec();
        exact.extend(std::iter::repeat_n(b'b', NAME_CAP));
        let l = parse(&exact, false).unwrap();
        assert!(!l.cut && l.name.len() == NAME_CAP);
    }
}
