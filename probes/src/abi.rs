//! `#[repr(C)]` twins of the structs in `include/emberprof.h`.

/// Length of the kernel's task comm, including the NUL.
pub const COMM_LEN: usize = 16;

/// Key of the in-kernel sample counts (`struct ep_sample_key`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    pub tid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    pub comm: [u8; COMM_LEN],
}

// SAFETY: plain old data with no padding (checked by the layout test).
unsafe impl aya::Pod for SampleKey {}

impl SampleKey {
    /// The thread name up to its NUL, lossily decoded.
    pub fn comm_str(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// Indexes of the per-CPU counter array (`enum ep_counter`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Samples = 0,
    Idle = 1,
    UserStackMapFull = 2,
    KernelStackMapFull = 3,
    StackError = 4,
    CountMapFull = 5,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 6] = [
        Counter::Samples,
        Counter::Idle,
        Counter::UserStackMapFull,
        Counter::KernelStackMapFull,
        Counter::StackError,
        Counter::CountMapFull,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    mod c {
        include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));
    }

    #[test]
    fn sample_key_matches_c_layout() {
        assert_eq!(size_of::<SampleKey>(), c::EP_SAMPLE_KEY_SIZE);
        assert_eq!(offset_of!(SampleKey, tgid), c::EP_SAMPLE_KEY_TGID_OFFSET);
        assert_eq!(offset_of!(SampleKey, tid), c::EP_SAMPLE_KEY_TID_OFFSET);
        assert_eq!(
            offset_of!(SampleKey, user_stack_id),
            c::EP_SAMPLE_KEY_USER_STACK_ID_OFFSET
        );
        assert_eq!(
            offset_of!(SampleKey, kernel_stack_id),
            c::EP_SAMPLE_KEY_KERNEL_STACK_ID_OFFSET
        );
        assert_eq!(offset_of!(SampleKey, comm), c::EP_SAMPLE_KEY_COMM_OFFSET);
    }

    #[test]
    fn counters_match_c_enum() {
        assert_eq!(Counter::ALL.len(), c::EP_CNT_MAX);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut key = SampleKey::default();
        key.comm[..4].copy_from_slice(b"abc\0");
        key.comm[4] = b'x';
        assert_eq!(key.comm_str(), "abc");
        key.comm = [b'a'; COMM_LEN];
        assert_eq!(key.comm_str().len(), COMM_LEN);
    }
}
