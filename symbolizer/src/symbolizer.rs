//! The symbolizer: stacks of addresses in, stacks of named locations out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Sym, Symbolized};
use blazesym::MaybeDefault;

use crate::files::{FileId, FileTable};
use crate::location::{Frame, FrameKind, Location, Module, Stack};
use crate::process::Process;

/// Counters of the symbolizer's work since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Addresses answered from the location cache.
    pub cache_hits: u64,
    /// Addresses that had to be symbolized.
    pub cache_misses: u64,
    /// Distinct files opened (one per build ID, else per inode).
    pub files: u64,
    /// Processes whose mappings were captured.
    pub processes: u64,
    /// Processes that were gone before we could read their mappings.
    pub processes_gone: u64,
    /// Files whose symbols could not be read at all (corrupt or unsupported).
    pub file_errors: u64,
    /// Addresses left unnamed because their file's symbols could not be read.
    pub addresses_unreadable: u64,
    /// Entries in the location cache now.
    pub cache_entries: u64,
    /// Times the location cache reached its limit and was emptied.
    pub cache_resets: u64,
    /// Processes whose mappings are held now.
    pub processes_held: u64,
    /// Times the open files passed their limit and every file and parsed table was let go.
    pub file_resets: u64,
}

/// Default bound on files held open with their parsed symbol tables.
pub const DEFAULT_FILE_LIMIT: usize = 4096;

/// Default bound of the location cache (about 200 bytes an entry).
pub const DEFAULT_CACHE_ENTRIES: usize = 1_000_000;

/// One stack to symbolize: the addresses of one sample, leaf first.
#[derive(Clone, Copy, Debug)]
pub struct StackRequest<'a> {
    pub pid: u32,
    pub user: &'a [u64],
    pub kernel: &'a [u64],
}

/// Where one address resolves: a cache key or a fixed location.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(FileId, u64),
    Kernel(u64),
}

/// Symbolizes stacks of many processes with shared, run-long caches.
pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    files: FileTable,
    processes: HashMap<u32, Process>,
    cache: HashMap<Key, Arc<Location>>,
    /// Files whose symbols could not be read: named `module+offset` from then on.
    broken: HashSet<FileId>,
    kernel_module: Arc<Module>,
    unknown: Arc<Location>,
    stats: SymbolizerStats,
    /// Entries the location cache may hold before it is emptied.
    cache_limit: usize,
    /// Files held open (with blazesym's parsed tables) before everything is let go.
    file_limit: usize,
    /// Processes found gone at the last `forget_exited`: dropped if still gone at the next,
    /// so that samples drained just before an exit are still symbolized.
    gone_once: HashSet<u32>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with demangling, source lines and inlined functions enabled.
    pub fn new() -> Self {
        let blaze = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            // Files are addressed by /proc/self/fd paths we keep open: they cannot change.
            .enable_auto_reload(false)
            .build();
        Symbolizer {
            blaze,
            files: FileTable::default(),
            processes: HashMap::new(),
            cache: HashMap::new(),
            broken: HashSet::new(),
            kernel_module: Arc::new(Module {
                path: Arc::from("[kernel.kallsyms]"),
                build_id: None,
            }),
            unknown: Arc::new(Location {
                kind: FrameKind::User,
                module: None,
                address: 0,
                frames: Vec::new(),
            }),
            stats: SymbolizerStats::default(),
            cache_limit: DEFAULT_CACHE_ENTRIES,
            file_limit: DEFAULT_FILE_LIMIT,
            gone_once: HashSet::new(),
        }
    }

    /// Bounds the files held open: past `files`, `forget_exited` lets all of them go (with
    /// blazesym's parsed tables, which it cannot evict one by one) and starts over.
    pub fn set_file_limit(&mut self, files: usize) {
        self.file_limit = files.max(1);
    }

    /// Counters since creation.
    pub fn stats(&self) -> SymbolizerStats {
        SymbolizerStats {
            files: self.files.len() as u64,
            cache_entries: self.cache.len() as u64,
            processes_held: self.processes.len() as u64,
            ..self.stats
        }
    }

    /// Bounds the location cache: past `entries` it is emptied (and refilled by use), so
    /// memory stays flat however many distinct addresses a host runs through.
    pub fn set_cache_limit(&mut self, entries: usize) {
        self.cache_limit = entries.max(1);
    }

    /// Drops the mappings of processes that have exited, once their samples have been
    /// symbolized (call between drains): a process is dropped at the second call that finds
    /// it gone. Returns how many were dropped.
    pub fn forget_exited(&mut self) -> usize {
        let before = self.processes.len();
        let gone: HashSet<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let previously = std::mem::take(&mut self.gone_once);
        self.processes
            .retain(|pid, _| !(gone.contains(pid) && previously.contains(pid)));
        self.gone_once = gone
            .into_iter()
            .filter(|pid| self.processes.contains_key(pid))
            .collect();
        let forgotten = before - self.processes.len();
        if self.files.len() > self.file_limit {
            // Processes refer to files by their place in the table: all go together. Live
            // processes are observed again at their next sample.
            let mut fresh = Symbolizer::new();
            fresh.cache_limit = self.cache_limit;
            fresh.file_limit = self.file_limit;
            fresh.stats = self.stats;
            fresh.stats.file_resets += 1;
            *self = fresh;
        }
        forgotten
    }

    /// Captures a process's mappings now, while it is alive. Symbolizing its stacks later
    /// works even after it exits.
    pub fn observe(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            let process = Process::snapshot(pid, &mut self.files);
            self.stats.processes += 1;
            if !process.seen_alive {
                self.stats.processes_gone += 1;
            }
            self.processes.insert(pid, process);
        }
    }

    /// The process's name (its /proc/PID/comm when first observed), if known.
    pub fn process_name(&self, pid: u32) -> Option<Arc<str>> {
        self.processes.get(&pid)?.name.clone()
    }

    /// Symbolizes stacks, one output per request, each leaf first (kernel then user).
    /// Never fails: what cannot be named becomes `module+offset` or `[unknown]`.
    pub fn symbolize(&mut self, requests: &[StackRequest<'_>]) -> Vec<Stack> {
        let mut refreshed = HashSet::new();
        for r in requests {
            self.observe(r.pid);
            // A leaf outside every known mapping means the process mapped code since we
            // looked (dlopen, exec): look again, once per batch. Callers are not checked:
            // frame-pointer walks through code built without them yield garbage there.
            let stale = self.processes.get(&r.pid).is_some_and(|p| {
                p.seen_alive && r.user.first().is_some_and(|&a| p.find(a).is_none())
            });
            if stale && refreshed.insert(r.pid) {
                let process = Process::snapshot(r.pid, &mut self.files);
                if process.seen_alive {
                    self.processes.insert(r.pid, process);
                }
            }
        }
        let keyed: Vec<Vec<Result<Key, Arc<Location>>>> =
            requests.iter().map(|r| self.keys(r)).collect();
        if self.cache.len() > self.cache_limit {
            self.cache.clear();
            self.stats.cache_resets += 1;
        }
        self.fill_cache(keyed.iter().flatten().filter_map(|k| k.as_ref().ok()));
        keyed
            .into_iter()
            .map(|keys| {
                keys.into_iter()
                    .map(|k| match k {
                        Ok(key) => self
                            .cache
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| self.unknown.clone()),
                        Err(fixed) => fixed,
                    })
                    .collect()
            })
            .collect()
    }

    /// Cache keys for a stack, or a fixed location for addresses outside any known file.
    fn keys(&self, r: &StackRequest<'_>) -> Vec<Result<Key, Arc<Location>>> {
        // Callers' addresses are return addresses: the call is the instruction before.
        let adjust = |i: usize, addr: u64| if i == 0 { addr } else { addr.saturating_sub(1) };
        let mut out = Vec::with_capacity(r.kernel.len() + r.user.len());
        out.extend(
            r.kernel
                .iter()
                .enumerate()
                .map(|(i, &a)| Ok(Key::Kernel(adjust(i, a)))),
        );
        let process = self.processes.get(&r.pid);
        for (i, &addr) in r.user.iter().enumerate() {
            let addr = adjust(i, addr);
            let mapping = process.and_then(|p| p.find(addr));
            out.push(match mapping {
                Some(m) => {
                    let offset = addr - m.start + m.offset;
                    match (m.file, &m.module) {
                        (Some(file), _) => Ok(Key::User(file, offset)),
                        (None, module) => Err(Arc::new(Location {
                            kind: FrameKind::User,
                            module: module.clone(),
                            address: if module.is_some() { offset } else { addr },
                            frames: Vec::new(),
                        })),
                    }
                }
                None => {
                    // Nothing is executable there: the walk has left the real stack (a frame
                    // without a frame pointer). One [unknown] ends it, so that garbage tails
                    // do not split one stack into many.
                    out.push(Err(self.unknown.clone()));
                    break;
                }
            });
        }
        out
    }

    /// Symbolizes every key not yet cached, one blazesym call per file and one for the kernel.
    fn fill_cache<'k>(&mut self, keys: impl Iterator<Item = &'k Key>) {
        let mut per_file: HashMap<FileId, HashSet<u64>> = HashMap::new();
        let mut kernel: HashSet<u64> = HashSet::new();
        for key in keys {
            if self.cache.contains_key(key) {
                self.stats.cache_hits += 1;
                continue;
            }
            match *key {
                Key::User(file, offset) => per_file.entry(file).or_default().insert(offset),
                Key::Kernel(addr) => kernel.insert(addr),
            };
        }
        for (file, offsets) in per_file {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            self.stats.cache_misses += offsets.len() as u64;
            let open = self.files.get(file);
            let module = open.module.clone();
            let results = if self.broken.contains(&file) {
                Err(None)
            } else {
                let mut elf = Elf::new(open.path.clone());
                elf.debug_syms = true;
                let results = self
                    .blaze
                    .symbolize(&Source::Elf(elf), Input::FileOffset(&offsets));
                checked(results, offsets.len()).map_err(Some)
            };
            let results = results.unwrap_or_else(|error| {
                if let Some(error) = error {
                    tracing::warn!(module = %module.path, %error,
                        "cannot read symbols; frames in it are named module+offset");
                    self.broken.insert(file);
                    self.stats.file_errors += 1;
                }
                self.stats.addresses_unreadable += offsets.len() as u64;
                Vec::new()
            });
            let named = named(&results, &offsets, FrameKind::User, &module);
            for (offset, location) in offsets.iter().zip(named) {
                self.cache.insert(Key::User(file, *offset), location);
            }
        }
        if !kernel.is_empty() {
            let addrs: Vec<u64> = kernel.into_iter().collect();
            self.stats.cache_misses += addrs.len() as u64;
            let source = Source::Kernel(Kernel {
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Kernel::default()
            });
            let results = checked(
                self.blaze.symbolize(&source, Input::AbsAddr(&addrs)),
                addrs.len(),
            )
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot symbolize kernel addresses");
                self.stats.file_errors += 1;
                self.stats.addresses_unreadable += addrs.len() as u64;
                Vec::new()
            });
            let named = named(&results, &addrs, FrameKind::Kernel, &self.kernel_module);
            for (addr, location) in addrs.iter().zip(named) {
                self.cache.insert(Key::Kernel(*addr), location);
            }
        }
    }
}

/// blazesym's answer for a batch, or why the whole batch failed.
fn checked<'a>(
    results: blazesym::Result<Vec<Symbolized<'a>>>,
    expected: usize,
) -> Result<Vec<Symbolized<'a>>, String> {
    match results {
        Ok(r) if r.len() == expected => Ok(r),
        Ok(r) => Err(format!("{} results for {expected} addresses", r.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Locations for a batch of addresses of one module; addresses without a result stay
/// unnamed but keep their module and offset.
fn named(
    results: &[Symbolized<'_>],
    addrs: &[u64],
    kind: FrameKind,
    module: &Arc<Module>,
) -> Vec<Arc<Location>> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let frames = match results.get(i) {
                Some(Symbolized::Sym(sym)) => frames_of(sym),
                _ => Vec::new(),
            };
            Arc::new(Location {
                kind,
                module: Some(module.clone()),
                address: addr,
                frames,
            })
        })
        .collect()
}

/// The frames of one symbol, innermost inlined function first.
fn frames_of(sym: &Sym<'_>) -> Vec<Frame> {
    let frame = |name: &str, info: Option<&blazesym::symbolize::CodeInfo<'_>>| Frame {
        function: Arc::from(name),
        file: info.map(|c| Arc::from(c.to_path().to_string_lossy().as_ref())),
        line: info.and_then(|c| c.line).unwrap_or(0),
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref()))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
    }

    fn symbolize_one(s: &mut Symbolizer, pid: u32, user: &[u64], kernel: &[u64]) -> Stack {
        s.symbolize(&[StackRequest { pid, user, kernel }]).remove(0)
    }

    #[test]
    fn names_own_rust_function_with_file_and_line() {
        let mut s = Symbolizer::new();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, std::process::id(), &[addr], &[]);
        let loc = &stack[0];
        assert_eq!(loc.kind, FrameKind::User);
        let frame = loc.frames.last().expect("named");
        assert!(
            frame
                .function
                .ends_with("marker_function_for_symbolizer_test"),
            "demangled Rust path expected, got {}",
            frame.function
        );
        assert!(
            frame
                .file
                .as_deref()
                .unwrap_or("")
                .ends_with("symbolizer.rs"),
            "{frame:?}"
        );
        assert!(frame.line > 0);
        assert!(
            loc.module.as_ref().unwrap().build_id.is_some(),
            "Rust test binaries carry a build ID"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_exited_processes_are_forgotten() {
        let mut s = Symbolizer::new();
        s.set_cache_limit(1);
        let pid = std::process::id();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        symbolize_one(&mut s, pid, &[addr], &[]);
        symbolize_one(&mut s, pid, &[addr + 1], &[]);
        symbolize_one(&mut s, pid, &[addr + 2], &[]);
        let st = s.stats();
        assert!(st.cache_resets >= 1, "{st:?}");
        assert!(st.cache_entries <= 2, "{st:?}");
        s.observe(u32::MAX - 2); // never existed
        assert_eq!(s.stats().processes_held, 2);
        // Gone at one call is kept until the next: its last samples may still come.
        assert_eq!(s.forget_exited(), 0);
        assert_eq!(s.forget_exited(), 1);
        assert_eq!(s.stats().processes_held, 1, "the live process stays");

        // Past the file limit everything is let go, and symbolizing works again after.
        s.set_file_limit(1);
        assert!(s.stats().files > 1);
        s.forget_exited();
        let st = s.stats();
        assert_eq!(
            (st.files, st.processes_held, st.file_resets),
            (0, 0, 1),
            "{st:?}"
        );
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(!stack[0].frames.is_empty(), "named again after the reset");
    }

    #[test]
    fn second_lookup_is_a_cache_hit() {
        let mut s = Symbolizer::new();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let pid = std::process::id();
        let a = symbolize_one(&mut s, pid, &[addr], &[]);
        let misses = s.stats().cache_misses;
        let b = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(Arc::ptr_eq(&a[0], &b[0]));
        assert_eq!(s.stats().cache_misses, misses);
        assert_eq!(s.stats().cache_hits, 1);
    }

    #[test]
    fn process_that_never_existed_gives_an_unknown_frame() {
        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, u32::MAX - 7, &[0x401000, 0x401234], &[]);
        assert_eq!(
            stack.len(),
            1,
            "the walk ends at the first unmapped address"
        );
        assert!(stack[0].is_unknown() && stack[0].to_string() == "[unknown]");
        assert_eq!(s.stats().processes_gone, 1);
    }

    #[test]
    fn garbage_callers_end_the_stack_in_one_unknown_frame() {
        let mut s = Symbolizer::new();
        let real = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, std::process::id(), &[real, 0x10, real, 0x20], &[]);
        assert_eq!(stack.len(), 2);
        assert!(!stack[0].is_unknown());
        assert_eq!(stack[1].to_string(), "[unknown]");
    }

    #[test]
    fn process_observed_then_exited_keeps_its_modules() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for exec to replace our image with sleep's.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = loop {
            let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
            if !text.contains(exe.to_str().unwrap()) && text.contains("sleep") {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let text_map = crate::parse_maps(&maps)
            .into_iter()
            .find(|m| m.executable && m.path.ends_with("/sleep"))
            .unwrap();
        let mut s = Symbolizer::new();
        s.observe(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let addr = text_map.start + 0x10;
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        let module = stack[0].module.as_ref().expect("module known after exit");
        assert!(module.path.ends_with("/sleep"));
        assert_eq!(stack[0].address, addr - text_map.start + text_map.offset);
        assert_ne!(stack[0].to_string(), "[unknown]");
        assert_eq!(s.process_name(pid).as_deref(), Some("sleep"));
    }

    #[test]
    fn corrupt_elf_gives_module_offset_frames_and_is_counted() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("ep-corrupt-{}.so", std::process::id()));
        let mut junk = b"\x7fELF\x02\x01\x01".to_vec();
        junk.resize(8192, 0xa5);
        std::fs::write(&path, &junk).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private read+exec mapping of a file we own, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let addr = base as u64 + 0x1234;

        let mut s = Symbolizer::new();
        let pid = std::process::id();
        let first = symbolize_one(&mut s, pid, &[addr], &[]);
        let again = symbolize_one(&mut s, pid, &[addr + 8], &[]);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, 8192) };
        let _ = std::fs::remove_file(&path);

        for (stack, offset) in [(first, 0x1234), (again, 0x1234 + 8)] {
            assert!(stack[0].is_unknown());
            assert_eq!(stack[0].address, offset);
            assert!(
                stack[0].to_string().starts_with("ep-corrupt-"),
                "{}",
                stack[0]
            );
        }
        assert_eq!(s.stats().file_errors, 1, "a broken file is tried once");
        assert_eq!(s.stats().addresses_unreadable, 2);
    }

    #[test]
    fn code_mapped_after_first_sight_is_found() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        s.observe(pid);
        // Forget what was captured, as if the code had been mapped afterwards.
        s.processes.get_mut(&pid).unwrap().mappings.clear();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(!stack[0].is_unknown(), "maps were not re-read");
    }

    #[test]
    fn demangles_cpp_names() {
        let dir = std::env::temp_dir().join(format!("ep-sym-cpp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("spin.cpp");
        std::fs::write(
            &src,
            r#"#include <cstdio>
#include <unistd.h>
namespace shop { struct Cart { __attribute__((noinline)) int total(int n); }; }
int shop::Cart::total(int n) { return n * 3; }
int main() {
    shop::Cart c;
    std::printf("%p\n", (void*)&shop::Cart::total);
    std::fflush(stdout);
    sleep(30);
    return c.total(1);
}
"#,
        )
        .unwrap();
        let exe = dir.join("spin");
        let built = Command::new("c++")
            .args(["-O1", "-g", "-Wno-pmf-conversions", "-o"])
            .arg(&exe)
            .arg(&src)
            .status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "building the C++ test program needs g++"
        );
        let mut child = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();

        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, child.id(), &[addr], &[]);
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let name = &stack[0].frames.last().expect("named").function;
        assert_eq!(&**name, "shop::Cart::total(int)");
    }

    #[test]
    fn names_kernel_functions_from_kallsyms() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let addr = kallsyms
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
                (name == "vfs_write").then(|| u64::from_str_radix(addr, 16).ok())?
            })
            .unwrap();
        if addr == 0 {
            // kallsyms hides addresses from unprivileged readers.
            assert!(
                std::env::var_os("CI").is_none(),
                "kernel symbolization test needs root in CI"
            );
            return;
        }
        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, std::process::id(), &[], &[addr + 4, addr + 8]);
        assert_eq!(stack.len(), 2);
        for loc in stack.iter() {
            assert_eq!(loc.kind, FrameKind::Kernel);
            assert_eq!(&*loc.frames[0].function, "vfs_write");
            assert_eq!(&*loc.module.as_ref().unwrap().path, "[kernel.kallsyms]");
        }
    }
}
