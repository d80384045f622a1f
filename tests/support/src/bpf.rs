//! What BPF programs and maps are loaded in the kernel, read through aya (needs root or
//! CAP_BPF). Another BPF user on the host may load or unload objects at any time: an object
//! gone between being listed and being opened is left out, not an error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use aya::programs::ProgramError;
use aya::Pod;

/// The BPF programs loaded in the kernel now: id and name (the kernel keeps 15 characters).
pub fn loaded_bpf_programs() -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    for program in aya::programs::loaded_programs() {
        match program {
            Ok(info) => {
                names.insert(info.id(), String::from_utf8_lossy(info.name()).into_owned());
            }
            Err(ProgramError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("listing the loaded BPF programs: {e}"),
        }
    }
    names
}

/// Ids of the BPF programs process `pid` holds, as program fds or through links. A program
/// records no owner, so the `prog_id:` lines of the process's fdinfo are what ties it to
/// the process; other BPF users on the host (another emberprof) do not appear here.
pub fn bpf_programs_held_by(pid: u32) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading fdinfo");
    for entry in dir.flatten() {
        // An fd closed since the listing has no fdinfo any more.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    ids
}

/// Whether the first loaded hash map named `map` (lowest id) holds the 4-byte key `key`;
/// `V` is the map's value type. `None` when no such map is loaded.
pub fn bpf_map_has_u32_key<V: Pod>(map: &str, key: u32) -> Option<bool> {
    for info in aya::maps::loaded_maps() {
        let info = match info {
            Ok(info) => info,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("listing the loaded BPF maps: {e}"),
        };
        if info.name_as_str() != Some(map) {
            continue;
        }
        let data = match MapData::from_id(info.id()) {
            Ok(data) => data,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("opening BPF map {map} (id {}): {e}", info.id()),
        };
        let typed = match info.map_type() {
            Ok(MapType::Hash) => Map::HashMap(data),
            Ok(MapType::LruHash) => Map::LruHashMap(data),
            other => panic!("BPF map {map} is not a hash map: {other:?}"),
        };
        let hash = HashMap::<MapData, u32, V>::try_from(typed)
            .unwrap_or_else(|e| panic!("BPF map {map} as a u32-keyed hash map: {e}"));
        return match hash.get(&key, 0) {
            Ok(_) => Some(true),
            Err(MapError::KeyNotFound) => Some(false),
            Err(e) => panic!("looking up {key} in BPF map {map}: {e}"),
        };
    }
    None
}

/// Whether the error says the map was unloaded between being listed and being opened.
fn gone(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(e) if e.io_error.kind() == ErrorKind::NotFound)
}
