//! Which CPython a binary is: from its exported `Py_Version` (3.11+), the cookie and version
//! at the start of its `_PyRuntime` (3.13+), or its file name (`libpython3.10.so.1.0`).

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PyVersion {
    pub major: u8,
    pub minor: u8,
    /// 0 when only the file name told the version.
    pub micro: u8,
}

impl PyVersion {
    /// From a PY_VERSION_HEX value (0x030c01f0 is 3.12.1 final).
    pub fn from_hex(hex: u32) -> PyVersion {
        PyVersion {
            major: (hex >> 24) as u8,
            minor: (hex >> 16) as u8,
            micro: (hex >> 8) as u8,
        }
    }

    /// From a file name `libpythonX.Y[flags].so[.N]` or `pythonX.Y[flags]`; `t` (free
    /// threaded) is reported in the second value.
    pub fn from_file_name(name: &str) -> Option<(PyVersion, bool)> {
        let rest = name
            .strip_prefix("libpython")
            .or_else(|| name.strip_prefix("python"))?;
        let (major, rest) = rest.split_once('.')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let flags = &rest[digits.len()..];
        let flags = flags.split('.').next().unwrap_or("");
        if !flags.chars().all(|c| c.is_ascii_lowercase()) {
            return None;
        }
        let version = PyVersion {
            major: major.parse().ok()?,
            minor: digits.parse().ok()?,
            micro: 0,
        };
        Some((version, flags.contains('t')))
    }
}

impl std::fmt::Display for PyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.micro > 0 {
            write!(f, ".{}", self.micro)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_versions_read_as_cpython_writes_them() {
        let v = PyVersion::from_hex(0x030c01f0);
        assert_eq!((v.major, v.minor, v.micro), (3, 12, 1));
        assert_eq!(PyVersion::from_hex(0x030d00f0).to_string(), "3.13");
        assert_eq!(PyVersion::from_hex(0x030b07f0).to_string(), "3.11.7");
    }

    #[test]
    fn file_names_give_the_minor_version() {
        let v = |n| PyVersion::from_file_name(n).map(|(v, t)| (v.minor, t));
        assert_eq!(v("libpython3.10.so.1.0"), Some((10, false)));
        assert_eq!(v("libpython3.13t.so.1.0"), Some((13, true)));
        assert_eq!(v("python3.11"), Some((11, false)));
        assert_eq!(v("python3"), None);
        assert_eq!(v("python3.12-config"), None);
        assert_eq!(v("libpython3.so"), None);
    }
}
