//! Network sysctls under `/proc/sys/net`.
//!
//! The files are opened by the calling thread, so they are those of the thread's network namespace
//! (a thread that entered a namespace with [`crate::netns::run_in`] sees that namespace's values).
//! Keys are paths below `/proc/sys` with slashes (`net/ipv4/conf/eth1/rp_filter`): interface names
//! may contain dots, so the dotted `sysctl` spelling would be ambiguous.

use std::io::Write;

use super::{Error, Family, Result};

fn path(op: &str, key: &str) -> Result<String> {
    if !key.starts_with("net/")
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(Error::refused(
            op,
            format!("{key:?} is not a key below /proc/sys/net"),
        ));
    }
    Ok(format!("/proc/sys/{key}"))
}

/// Reads a sysctl, without the trailing newline.
pub fn read(key: &str) -> Result<String> {
    let op = format!("reading {key}");
    let path = path(&op, key)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(&op, e))?;
    Ok(text.trim_end_matches('\n').to_string())
}

/// Writes a sysctl.
pub fn write(key: &str, value: &str) -> Result<()> {
    let op = format!("writing {value} to {key}");
    let path = path(&op, key)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(&op, e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| Error::io(&op, e))
}

/// The directory of a family: `net/ipv4` or `net/ipv6`.
pub fn family_dir(family: Family) -> &'static str {
    match family {
        Family::V4 => "net/ipv4",
        Family::V6 => "net/ipv6",
    }
}

/// A per-interface key: `conf(Family::V4, "eth1", "rp_filter")` is `net/ipv4/conf/eth1/rp_filter`
/// (`all` and `default` work as interface names).
pub fn conf(family: Family, interface: &str, name: &str) -> String {
    format!("{}/conf/{interface}/{name}", family_dir(family))
}

/// Whether forwarding is on for the family (`net/ipv4/ip_forward`, `net/ipv6/conf/all/forwarding`).
pub fn forwarding(family: Family) -> Result<bool> {
    let key = match family {
        Family::V4 => "net/ipv4/ip_forward".to_string(),
        Family::V6 => conf(Family::V6, "all", "forwarding"),
    };
    Ok(read(&key)? != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_confined_to_proc_sys_net() {
        assert_eq!(
            path("x", "net/ipv4/ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert!(path("x", "kernel/hostname").is_err());
        assert!(path("x", "net/../kernel/hostname").is_err());
        assert!(path("x", "net//ipv4").is_err());
        assert_eq!(
            conf(Family::V4, "eth1", "rp_filter"),
            "net/ipv4/conf/eth1/rp_filter"
        );
        assert_eq!(
            conf(Family::V6, "all", "forwarding"),
            "net/ipv6/conf/all/forwarding"
        );
    }

    #[test]
    fn reads_a_value() {
        // Readable by anyone, in whatever namespace the test runs.
        let value = read("net/ipv4/ip_forward").unwrap();
        assert!(value == "0" || value == "1", "{value:?}");
        let error = read("net/ipv4/no_such_key").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("reading net/ipv4/no_such_key: "),
            "{error}"
        );
    }
}
