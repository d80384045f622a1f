//! Reading another process's memory with process_vm_readv(2): one syscall per read, no
//! ptrace stop, and a clean error for an address that is not mapped (or a process gone).

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {len} bytes at {addr:#x} of process {pid}: {source}")]
    Os {
        pid: u32,
        addr: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error("reading {len} bytes at {addr:#x} of process {pid}: only {got} were readable")]
    Short {
        pid: u32,
        addr: u64,
        len: usize,
        got: usize,
    },
}

/// Somewhere to read a process's memory from (a live process, or a test's buffer).
pub trait Memory {
    /// Fills `buf` from `addr`, wholly or not at all.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// A little-endian u64 at `addr`.
    fn u64_at(&self, addr: u64) -> Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian u32 at `addr`.
    fn u32_at(&self, addr: u64) -> Result<u32, ReadError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A byte at `addr`.
    fn u8_at(&self, addr: u64) -> Result<u8, ReadError> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }
}

/// A live process's memory. Needs CAP_SYS_PTRACE (or the same user and a permissive
/// ptrace scope).
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pid: u32,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> Self {
        ProcessMemory { pid }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which we own mutably for the call; the remote
        // side is only read by the kernel, which checks it.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(ReadError::Os {
                pid: self.pid,
                addr,
                len: buf.len(),
                source: std::io::Error::last_os_error(),
            });
        }
        if n as usize != buf.len() {
            return Err(ReadError::Short {
                pid: self.pid,
                addr,
                len: buf.len(),
                got: n as usize,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_unmapped_addresses() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcessMemory::new(std::process::id());
        let addr = &value as *const u64 as u64;
        assert_eq!(mem.u64_at(addr).unwrap(), value);
        assert_eq!(mem.u32_at(addr).unwrap(), 0x5566_7788);
        assert_eq!(mem.u8_at(addr + 7).unwrap(), 0x11);
        let err = mem.u64_at(8).unwrap_err().to_string();
        assert!(err.contains("at 0x8 of process"), "{err}");
    }
}
