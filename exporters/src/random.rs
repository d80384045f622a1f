//! Cheap random numbers from the standard library's per-process hash keys: enough for
//! retry jitter and profile ids, not for anything secret.

use std::hash::{BuildHasher, Hasher};

/// A fresh random 64-bit value.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}
