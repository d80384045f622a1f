//! The files the symbolizer maps, in its own memory. blazesym maps a file whole and reads
//! its symbol tables and DWARF in place; the pages it touched count in our RSS (for the
//! 141 MB release build of emberprof, 80 MiB after naming a few addresses) until dropped.
//! `/proc/self/smaps` names each mapping's device and inode, which is how a file is found
//! there whatever path mapped it.

use std::collections::HashMap;

/// A file's device and inode, as `stat` gives them.
pub(crate) type Inode = (u64, u64);

/// This process's mappings of one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FileMappings {
    /// Resident bytes of all of them.
    pub(crate) resident: u64,
    /// Shared read-only mappings (`r--s`): how blazesym maps a file it reads. Dropping
    /// their pages loses nothing: the next read faults them in again from the page cache.
    pub(crate) shared_read_only: Vec<(u64, u64)>,
}

/// This process's file mappings, by file.
pub(crate) fn mapped_files() -> HashMap<Inode, FileMappings> {
    match std::fs::read_to_string("/proc/self/smaps") {
        Ok(text) => parse_smaps(&text),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read /proc/self/smaps");
            HashMap::new()
        }
    }
}

/// Drops the resident pages of `range` from this process (they stay in the page cache).
pub(crate) fn drop_pages((start, end): (u64, u64)) {
    // SAFETY: only called on shared read-only file mappings, whose pages can always be
    // read again from the file; no memory is unmapped.
    let rc = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            (end - start) as usize,
            libc::MADV_DONTNEED,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "madvise(DONTNEED) failed");
    }
}

/// File mappings in smaps text; anonymous mappings (inode 0) left out.
pub(crate) fn parse_smaps(text: &str) -> HashMap<Inode, FileMappings> {
    let mut out: HashMap<Inode, FileMappings> = HashMap::new();
    let mut current: Option<Inode> = None;
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            if let (Some(file), Some(kb)) = (current, kb.trim().strip_suffix("kB")) {
                if let Ok(kb) = kb.trim().parse::<u64>() {
                    out.entry(file).or_default().resident += kb * 1024;
                }
            }
            continue;
        }
        if let Some(header) = mapping_header(line) {
            current = header.as_ref().map(|h| h.file);
            if let Some(h) = header.filter(|h| h.shared_read_only) {
                out.entry(h.file)
                    .or_default()
                    .shared_read_only
                    .push(h.range);
            }
        }
    }
    out
}

struct Header {
    file: Inode,
    range: (u64, u64),
    shared_read_only: bool,
}

/// `Some(header)` for a mapping's header line (`Some(None)` for an anonymous one); `None`
/// for the field lines under it.
fn mapping_header(line: &str) -> Option<Option<Header>> {
    let mut fields = line.split_ascii_whitespace();
    let range = fields.next()?;
    if range.ends_with(':') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let _offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    if inode == 0 {
        return Some(None);
    }
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(Some(Header {
        file: (libc::makedev(major, minor), inode),
        range: (start, end),
        shared_read_only: perms == "r--s",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1311                       /usr/bin/big
Size:                128 kB
Rss:                  64 kB
Pss:                  64 kB
VmFlags: rd mr mw me dw sd
55d0c0a20000-55d0c0b20000 r-xp 00020000 fd:01 1311                       /usr/bin/big
Size:               1024 kB
Rss:                 512 kB
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                 132 kB
7f1000000000-7f1000001000 r--p 00000000 103:02 77                        /lib/x.so (deleted)
Rss:                   4 kB
7f2000000000-7f2000800000 r--s 00000000 fd:01 99                         /usr/bin/read
Rss:                   0 kB
";

    #[test]
    fn resident_pages_are_summed_per_file_and_anonymous_memory_is_left_out() {
        let r = parse_smaps(SMAPS);
        assert_eq!(r.len(), 3, "{r:?}");
        let big = &r[&(libc::makedev(0xfd, 1), 1311)];
        assert_eq!(big.resident, 576 * 1024);
        assert!(
            big.shared_read_only.is_empty(),
            "private mappings are the loader's"
        );
        assert_eq!(r[&(libc::makedev(0x103, 2), 77)].resident, 4096);
        let read = &r[&(libc::makedev(0xfd, 1), 99)];
        assert_eq!(
            read.shared_read_only,
            vec![(0x7f2000000000, 0x7f2000800000)]
        );
    }

    #[test]
    fn a_read_mapping_gives_its_pages_back_and_reads_the_same_after() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("ep-resident-{}", std::process::id()));
        let bytes: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let len = bytes.len();
        // SAFETY: a fresh read-only shared mapping of a file nobody writes; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping is `len` bytes long and lives until munmap below.
        let mapped = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        let sum = |m: &[u8]| m.iter().step_by(4096).map(|&b| b as u64).sum::<u64>();
        let before = sum(mapped);
        let ours = mapped_files()
            .remove(&(meta.dev(), meta.ino()))
            .expect("the mapping is in smaps");
        assert!(ours.resident >= (len as u64) / 2, "{ours:?}");
        assert_eq!(
            ours.shared_read_only,
            vec![(p as u64, p as u64 + len as u64)]
        );
        drop_pages(ours.shared_read_only[0]);
        let after = mapped_files().remove(&(meta.dev(), meta.ino())).unwrap();
        assert_eq!(after.resident, 0, "{after:?}");
        assert_eq!(sum(mapped), before, "the same bytes are read again");
        // SAFETY: unmapping what was mapped above; `mapped` is not used after.
        unsafe { libc::munmap(p, len) };
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn this_process_has_its_own_executable_resident() {
        use std::os::unix::fs::MetadataExt;
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        let r = mapped_files();
        assert!(
            r.get(&(exe.dev(), exe.ino()))
                .is_some_and(|m| m.resident > 0),
            "{r:?}"
        );
    }
}
