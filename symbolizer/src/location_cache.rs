//! From a sample's addresses to its locations: each address becomes a cache key (a file and
//! offset, or a kernel address) or a fixed location (JIT code named by the perf map, code
//! outside any readable file, the end of a broken walk); keys not yet cached are named, one
//! blazesym call per file, and every key is read from the cache.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::files::FileId;
use crate::heap::HeapDelta;
use crate::perf_map;
use crate::symbolizer::Symbolizer;
use emberprof_model::{Frame, FrameKind, KernelSample, Location, Stack};

/// Where one address resolves: a cache key or a fixed location.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(FileId, u64),
    Kernel(u64),
}

impl Symbolizer {
    /// The locations of each sample's addresses, naming first those not yet cached.
    pub(crate) fn locate(&mut self, requests: &[KernelSample]) -> Vec<Stack> {
        let keyed: Vec<Vec<Result<Key, Arc<Location>>>> =
            requests.iter().map(|r| self.keys(r)).collect();
        self.fill_cache(&keyed);
        keyed
            .into_iter()
            .map(|keys| {
                keys.into_iter()
                    .map(|k| match k {
                        Ok(key) => self.cached(key).unwrap_or_else(|| self.unknown.clone()),
                        Err(fixed) => fixed,
                    })
                    .collect()
            })
            .collect()
    }

    /// The cached location of a key, if named already.
    fn cached(&self, key: Key) -> Option<Arc<Location>> {
        match key {
            Key::User(file, offset) => self.files.get(file).locations.get(&offset).cloned(),
            Key::Kernel(addr) => self.kernel_cache.get(&addr).cloned(),
        }
    }

    /// Cache keys for a stack, or a fixed location for addresses outside any known file.
    fn keys(&mut self, r: &KernelSample) -> Vec<Result<Key, Arc<Location>>> {
        // Callers' addresses are return addresses: the call is the instruction before.
        let adjust = |i: usize, addr: u64| if i == 0 { addr } else { addr.saturating_sub(1) };
        let (user, kernel) = (r.user.addrs(), r.kernel.addrs());
        let mut out = Vec::with_capacity(kernel.len() + user.len());
        out.extend(
            kernel
                .iter()
                .enumerate()
                .map(|(i, &a)| Ok(Key::Kernel(adjust(i, a)))),
        );
        let unknown = self.unknown.clone();
        let mut process = self.processes.get_mut(&r.pid);
        let image = process
            .as_deref()
            .and_then(|p| p.image_index(Some(r.exec_id)));
        for (i, &addr) in user.iter().enumerate() {
            let addr = adjust(i, addr);
            let (Some(p), Some(image)) = (process.as_deref_mut(), image) else {
                out.push(Err(unknown));
                break;
            };
            let Some(m) = p.images[image].find(addr) else {
                // Nothing is executable there: the walk has left the real stack (a frame
                // without a frame pointer). One [unknown] ends it, so that garbage tails
                // do not split one stack into many.
                out.push(Err(unknown));
                break;
            };
            let offset = addr - m.start + m.offset;
            out.push(match (m.file, m.module.clone()) {
                (Some(file), _) => Ok(Key::User(file, offset)),
                (None, None) => {
                    // Anonymous executable memory: JIT code, named by the process's perf map.
                    let mut cx = perf_map::Context {
                        stats: &mut self.stats.perf_maps,
                        tick: self.tick,
                        budget: &self.perf_map_budget,
                        read_left: &mut self.perf_map_read_left,
                    };
                    let name = p.perf_map.as_mut().and_then(|pm| pm.lookup(addr, &mut cx));
                    if name.is_some() {
                        self.stats.jit_frames += 1;
                    }
                    Err(Arc::new(Location {
                        kind: FrameKind::Native,
                        module: None,
                        address: addr,
                        segment: None,
                        frames: name
                            .map(|function| {
                                vec![Frame {
                                    function,
                                    file: None,
                                    line: 0,
                                }]
                            })
                            .unwrap_or_default(),
                    }))
                }
                (None, Some(module)) if &*module.path == "[vdso]" => {
                    let vdso = self
                        .vdso
                        .get_or_init(crate::vdso::Vdso::own)
                        .as_ref()
                        .filter(|v| v.len == m.end - m.start);
                    let name = vdso.and_then(|v| v.lookup(offset));
                    Err(Arc::new(Location {
                        kind: FrameKind::Native,
                        module: Some(vdso.map_or(module, |v| v.module.clone())),
                        address: offset,
                        segment: None,
                        frames: name
                            .map(|function| {
                                vec![Frame {
                                    function,
                                    file: None,
                                    line: 0,
                                }]
                            })
                            .unwrap_or_default(),
                    }))
                }
                (None, module) => Err(Arc::new(Location {
                    kind: FrameKind::Native,
                    module,
                    address: offset,
                    segment: None,
                    frames: Vec::new(),
                })),
            });
        }
        out
    }

    /// Symbolizes every key not yet cached, one blazesym call per file.
    fn fill_cache(&mut self, keyed: &[Vec<Result<Key, Arc<Location>>>]) {
        let mut per_file: HashMap<FileId, HashSet<u64>> = HashMap::new();
        let mut kernel: HashSet<u64> = HashSet::new();
        for key in keyed.iter().flatten().filter_map(|k| k.as_ref().ok()) {
            match *key {
                Key::User(file, offset) => {
                    let f = self.files.get_mut(file);
                    f.last_used = self.tick;
                    if f.locations.contains_key(&offset) {
                        self.stats.cache_hits += 1;
                    } else {
                        per_file.entry(file).or_default().insert(offset);
                    }
                }
                Key::Kernel(addr) => {
                    if self.kernel_cache.contains_key(&addr) {
                        self.stats.cache_hits += 1;
                    } else {
                        kernel.insert(addr);
                    }
                }
            }
        }
        for (file, offsets) in per_file {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            self.stats.cache_misses += offsets.len() as u64;
            let named = self.symbolize_in_file(file, &offsets);
            let f = self.files.get_mut(file);
            f.last_parsed = self.tick;
            let held = HeapDelta::start();
            for (offset, location) in offsets.iter().zip(named) {
                f.locations.insert(*offset, location);
            }
            // The map's growth; the locations themselves were measured as they were made.
            f.locations_heap = f.locations_heap.saturating_add_signed(held.kept());
        }
        if !kernel.is_empty() {
            self.fill_kernel(kernel);
        }
    }
}
