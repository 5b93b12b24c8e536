//! Kernel parameters under /proc/sys. These are per network namespace for `net.*`, which is what
//! lets tests provision into a private namespace.

use std::path::PathBuf;

use anyhow::Context as _;

fn path(key: &str) -> anyhow::Result<PathBuf> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        || key.contains("..")
    {
        anyhow::bail!("invalid sysctl key {key:?}");
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

pub fn read(key: &str) -> anyhow::Result<String> {
    let p = path(key)?;
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

pub fn write(key: &str, value: &str) -> anyhow::Result<()> {
    let p = path(key)?;
    std::fs::write(&p, format!("{value}\n"))
        .with_context(|| format!("writing {value} to {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        for bad in ["", "net/../../etc", "a b", "net..x"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_a_real_value() {
        let v = read("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
