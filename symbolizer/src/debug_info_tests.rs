//! Symbolizing real stripped binaries: with a debug file in a build-ID directory, through a
//! debug link, from a debuginfod server, and with nothing at all; plus JIT perf maps and the
//! host-wide file cache across many processes.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{DebuginfodConfig, Symbolizer, SymbolizerConfig};
use emberprof_model::{KernelSample, Stack};

const PROGRAM: &str = r#"#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int stripped_target(int n) { return n * 7 + 1; }
int main(void) {
    printf("%p\n", (void *)stripped_target);
    fflush(stdout);
    sleep(60);
    return stripped_target(3);
}
"#;

/// A scratch directory removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ep-dbg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (needs binutils, gcc)"));
    assert!(status.success(), "{cmd:?} failed");
}

/// Builds `prog` with DWARF, then splits it: `prog.debug` (debug only) and `prog.stripped`
/// (no symbols, no DWARF), optionally with a `.gnu_debuglink` to `prog.debug`.
fn stripped_pair(dir: &Path, link: bool) -> (PathBuf, PathBuf) {
    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let full = dir.join("prog");
    run(Command::new("cc")
        .args(["-O1", "-g", "-Wl,--build-id", "-o"])
        .arg(&full)
        .arg(&src));
    let debug = dir.join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg("--compress-debug-sections=zlib")
        .arg(&full)
        .arg(&debug));
    let stripped = dir.join("prog.stripped");
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&full));
    if link {
        run(Command::new("objcopy")
            .current_dir(dir)
            .arg("--add-gnu-debuglink=prog.debug")
            .arg("prog.stripped"));
    }
    std::fs::remove_file(&full).unwrap();
    (stripped, debug)
}

/// Starts the program; returns it with the runtime address of `stripped_target`.
fn start(exe: &Path) -> (Child, u64) {
    let mut child = Command::new(exe).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
    (child, addr)
}

fn symbolize(s: &mut Symbolizer, pid: u32, addr: u64) -> Stack {
    s.symbolize(&[KernelSample::of(pid, &[addr], &[])])
        .remove(0)
}

fn config(debug_dirs: Vec<PathBuf>) -> SymbolizerConfig {
    SymbolizerConfig {
        debug_dirs,
        ..SymbolizerConfig::default()
    }
}

fn assert_named(stack: &Stack) {
    let frame = stack[0].frames.last().unwrap_or_else(|| {
        panic!("unnamed: {}", stack[0]);
    });
    assert_eq!(&*frame.function, "stripped_target");
    assert!(
        frame.file.as_deref().is_some_and(|f| f.ends_with("prog.c")),
        "{frame:?}"
    );
    assert_eq!(frame.line, 3, "{frame:?}");
}

#[test]
fn stripped_binary_is_named_from_the_build_id_directory() {
    let scratch = Scratch::new("buildid");
    let (stripped, debug) = stripped_pair(&scratch.0, false);
    let info = crate::elf_info::ElfInfo::read(&stripped).unwrap();
    assert!(!info.has_dwarf && !info.has_symtab, "really stripped");
    let id = crate::elf_info::hex(info.build_id.as_deref().unwrap());
    let debug_dir = scratch.0.join("debug");
    let dest = debug_dir.join(format!(".build-id/{}/{}.debug", &id[..2], &id[2..]));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::rename(&debug, &dest).unwrap();

    let (mut child, addr) = start(&stripped);
    let mut s = Symbolizer::with_config(config(vec![debug_dir]));
    let stack = symbolize(&mut s, child.id(), addr);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_named(&stack);
    let module = stack[0].module.as_ref().unwrap();
    assert_eq!(
        module.build_id.as_deref(),
        Some(id.as_str()),
        "mapping kept"
    );
    assert_eq!(s.stats().debug_files, 1);
}

#[test]
fn stripped_binary_is_named_through_its_debug_link() {
    let scratch = Scratch::new("link");
    let (stripped, _debug) = stripped_pair(&scratch.0, true);
    let (mut child, addr) = start(&stripped);
    // No debug directories: only the link beside the binary can find it.
    let mut s = Symbolizer::with_config(config(Vec::new()));
    let stack = symbolize(&mut s, child.id(), addr);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_named(&stack);
}

#[test]
fn stripped_binary_without_debug_info_gives_module_offset_frames() {
    let scratch = Scratch::new("bare");
    let (stripped, debug) = stripped_pair(&scratch.0, false);
    std::fs::remove_file(debug).unwrap();
    let (mut child, addr) = start(&stripped);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap();
    let mut s = Symbolizer::with_config(config(Vec::new()));
    let stack = symbolize(&mut s, child.id(), addr);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = crate::parse_maps(&maps)
        .into_iter()
        .find(|m| m.executable && m.start <= addr && addr < m.end)
        .unwrap();
    assert!(stack[0].is_unknown(), "{:?}", stack[0]);
    assert_eq!(stack[0].address, addr - text.start + text.offset);
    assert!(
        stack[0].to_string().starts_with("prog.stripped+0x"),
        "{}",
        stack[0]
    );
    let st = s.stats();
    assert_eq!((st.file_errors, st.debug_files), (0, 0), "{st:?}");
}

/// A real debuginfod (Debian's `debuginfod`) on loopback, serving `dir`.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn debuginfod_serving(dir: &Path, db: &Path) -> Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new("debuginfod")
        .arg("-F")
        .arg(dir)
        .args(["-p", &port.to_string(), "-d"])
        .arg(db)
        .args(["-t", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the debuginfod server (Debian package debuginfod) is needed");
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[test]
fn stripped_binary_is_named_after_a_debuginfod_fetch() {
    let scratch = Scratch::new("debuginfod");
    let served = scratch.0.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let (stripped, debug) = stripped_pair(&scratch.0, false);
    std::fs::rename(&debug, served.join("prog.debug")).unwrap();
    let server = debuginfod_serving(&served, &scratch.0.join("index.sqlite"));
    let cache_dir = scratch.0.join("cache");
    let dbgd = DebuginfodConfig {
        urls: vec![server.url.clone()],
        cache_dir: cache_dir.clone(),
        timeout: Duration::from_secs(10),
        negative_ttl: Duration::from_secs(3600),
    };
    let (mut child, addr) = start(&stripped);
    let pid = child.id();

    // The server indexes its directory in the background: wait until it answers.
    let info = crate::elf_info::ElfInfo::read(&stripped).unwrap();
    let id = crate::elf_info::hex(info.build_id.as_deref().unwrap());
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("{}/buildid/{id}/debuginfo", server.url);
    // debuginfod answers GET only.
    while probe
        .get(&url)
        .call()
        .map_or(true, |r| r.status().as_u16() != 200)
    {
        assert!(Instant::now() < deadline, "debuginfod never served {id}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut s = Symbolizer::with_config(SymbolizerConfig {
        debuginfod: Some(dbgd.clone()),
        ..config(Vec::new())
    });
    let first = symbolize(&mut s, pid, addr);
    assert!(
        first[0].is_unknown(),
        "the first answer does not wait for the fetch"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let named = loop {
        std::thread::sleep(Duration::from_millis(50));
        let stack = symbolize(&mut s, pid, addr);
        if !stack[0].is_unknown() {
            break stack;
        }
        assert!(Instant::now() < deadline, "never named after the fetch");
    };
    assert_named(&named);
    assert_eq!(s.stats().debuginfod_fetched, 1);
    assert!(cache_dir.join(&id).join("debuginfo").is_file());

    // A new symbolizer (an agent restart) names it at once from the on-disk cache, even
    // with the server gone.
    drop(server);
    let mut again = Symbolizer::with_config(SymbolizerConfig {
        debuginfod: Some(dbgd),
        ..config(Vec::new())
    });
    assert_named(&symbolize(&mut again, pid, addr));
    assert_eq!(again.stats().debuginfod_fetched, 0);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn perf_map_names_jit_code() {
    // SAFETY: a fresh anonymous mapping, only looked up by address, unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as u64;
    let pid = std::process::id();
    let map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    std::fs::write(
        &map,
        format!("{base:x} 80 LazyCompile:*jitted_handler app.js:12\n"),
    )
    .unwrap();
    let mut s = Symbolizer::new();
    let hit = symbolize(&mut s, pid, base + 0x10);
    let miss = symbolize(&mut s, pid, base + 0x100);
    assert!(s.stats().perf_maps.bytes > 0, "{:?}", s.stats().perf_maps);
    let _ = std::fs::remove_file(&map);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(base as *mut libc::c_void, 4096) };
    assert_eq!(
        hit[0].frames.first().map(|f| &*f.function),
        Some("LazyCompile:*jitted_handler app.js:12")
    );
    assert!(miss[0].is_unknown(), "past the JIT symbol's size");
    assert_eq!(s.stats().jit_frames, 1);
}

#[test]
fn a_library_shared_by_many_processes_is_parsed_once() {
    let mut children: Vec<Child> = (0..20)
        .map(|_| Command::new("sleep").arg("30").spawn().unwrap())
        .collect();
    let mut s = Symbolizer::new();
    let mut requests = Vec::new();
    for child in &children {
        let pid = child.id();
        // Wait for exec to replace the forked test image with sleep's.
        let deadline = Instant::now() + Duration::from_secs(10);
        let libc_text = loop {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            let found = crate::parse_maps(&maps)
                .into_iter()
                .find(|m| m.executable && m.path.contains("libc.so"));
            if let Some(m) = found.filter(|_| maps.contains("/sleep")) {
                break m;
            }
            assert!(Instant::now() < deadline, "sleep never mapped libc");
            std::thread::sleep(Duration::from_millis(5));
        };
        requests.push((pid, [libc_text.start + 0x1000]));
    }
    for (pid, user) in &requests {
        s.symbolize(&[KernelSample::of(*pid, user, &[])]);
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let st = s.stats();
    assert_eq!(st.processes, 20, "{st:?}");
    assert_eq!(
        st.files_parsed, 1,
        "libc parsed once for 20 processes: {st:?}"
    );
    assert_eq!((st.cache_misses, st.cache_hits), (1, 19), "{st:?}");
}

#[test]
fn binary_deleted_after_start_is_still_named() {
    let scratch = Scratch::new("deleted");
    let src = scratch.0.join("prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = scratch.0.join("prog");
    run(Command::new("cc")
        .args(["-O1", "-g", "-o"])
        .arg(&exe)
        .arg(&src));
    let (mut child, addr) = start(&exe);
    // Upgraded in place, as package managers do: the old file only lives on as the mapping.
    std::fs::remove_file(&exe).unwrap();
    let mut s = Symbolizer::new();
    let stack = symbolize(&mut s, child.id(), addr);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_named(&stack);
    assert!(!stack[0]
        .module
        .as_ref()
        .unwrap()
        .path
        .ends_with("(deleted)"));
}
