//! Block device numbers to names (`vda`, `nvme0n1`), from sysfs.

use std::collections::HashMap;
use std::path::Path;

/// Caches disk names by (major, minor).
#[derive(Default)]
pub struct DiskNames {
    names: HashMap<(u32, u32), String>,
}

impl DiskNames {
    /// The disk's name, or `major:minor` if sysfs does not know it.
    pub fn name(&mut self, major: u32, minor: u32) -> String {
        self.names
            .entry((major, minor))
            .or_insert_with(|| {
                let uevent = Path::new("/sys/dev/block").join(format!("{major}:{minor}/uevent"));
                std::fs::read_to_string(uevent)
                    .ok()
                    .and_then(|text| devname(&text))
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}

fn devname(uevent: &str) -> Option<String> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_devname() {
        assert_eq!(
            devname("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n"),
            Some("vda".to_string())
        );
        assert_eq!(devname("MAJOR=254\n"), None);
    }

    #[test]
    fn unknown_device_is_shown_by_number() {
        assert_eq!(DiskNames::default().name(4095, 1_000_000), "4095:1000000");
    }
}
