//! The root prefix: every host path fireclaw touches is resolved under one directory (default `/`),
//! so tests can provision into a temporary directory and compare trees.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPrefix {
    root: PathBuf,
}

impl RootPrefix {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RootPrefix { root: root.into() }
    }

    pub fn system() -> Self {
        RootPrefix::new("/")
    }

    /// True when this is the real host root: only then does fireclaw manage host-global things that
    /// cannot live under a prefix (apt packages, systemd, running services).
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Resolves an absolute host path (as written in the config) under the prefix.
    pub fn host(&self, absolute: impl AsRef<Path>) -> PathBuf {
        let absolute = absolute.as_ref();
        let relative = absolute.strip_prefix("/").unwrap_or(absolute);
        if relative.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        }
    }

    /// The inverse of [`RootPrefix::host`], for messages: the path as the host sees it.
    pub fn display(&self, resolved: &Path) -> String {
        match resolved.strip_prefix(&self.root) {
            Ok(rel) if !self.is_system() => format!("/{}", rel.display()),
            _ => resolved.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_under_prefix() {
        let r = RootPrefix::new("/tmp/x");
        assert_eq!(
            r.host("/etc/fireclaw"),
            PathBuf::from("/tmp/x/etc/fireclaw")
        );
        assert_eq!(r.host("/"), PathBuf::from("/tmp/x"));
        assert_eq!(r.display(Path::new("/tmp/x/etc/a")), "/etc/a");
        assert!(!r.is_system());
    }

    #[test]
    fn system_root_is_identity() {
        let r = RootPrefix::system();
        assert_eq!(r.host("/etc/a"), PathBuf::from("/etc/a"));
        assert_eq!(r.display(Path::new("/etc/a")), "/etc/a");
        assert!(r.is_system());
    }
}
