//! Parsing of /proc/PID/maps.

/// One line of /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub executable: bool,
    pub offset: u64,
    /// (major, minor) of the device holding the file.
    pub dev: (u32, u32),
    pub inode: u64,
    /// File path, pseudo-name such as `[vdso]`, or empty for anonymous memory. A
    /// ` (deleted)` suffix is kept: it tells that only /proc/PID/map_files can open it.
    pub path: String,
}

impl MapsEntry {
    /// Whether the mapping is backed by a file we could open.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses the text of /proc/PID/maps, skipping lines it cannot read.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MapsEntry> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    Some(MapsEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:01 1835106                    /usr/bin/cat
55d0c8a02000-55d0c8a07000 r-xp 00002000 fe:01 1835106                    /usr/bin/cat
7f1e2c828000-7f1e2c9bd000 r-xp 00028000 103:02 2360543                   /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2ca00000-7f1e2ca21000 rw-p 00000000 00:00 0 
7ffd5a1f0000-7ffd5a1f2000 r-xp 00000000 00:00 0                          [vdso]
7f0000000000-7f0000001000 r-xp 00001000 00:2a 77                         /tmp/x (deleted)
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn parses_real_shapes() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 7, "the garbage line is skipped");
        let text = &maps[1];
        assert_eq!(
            (text.start, text.end, text.offset),
            (0x55d0c8a02000, 0x55d0c8a07000, 0x2000)
        );
        assert!(text.executable && text.is_file());
        assert_eq!(text.dev, (0xfe, 1));
        assert_eq!(maps[2].dev, (0x103, 2));
        assert_eq!(maps[2].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(!maps[3].executable && !maps[3].is_file());
        assert_eq!(maps[4].path, "[vdso]");
        assert!(!maps[4].is_file());
        assert_eq!(maps[5].path, "/tmp/x (deleted)");
        assert!(maps[5].is_file());
    }
}
