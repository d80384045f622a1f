//! Names for the ids the kernel reports: cgroup paths, disk names.

pub mod attributes;
pub mod cgroups;
pub mod disks;
pub mod process;
