//! `MEMORY.md` in the workspace: read into the context, appended to by `save_memory`. A write is
//! a temporary file renamed over the old one, so a crash leaves the old or the new file, never half.

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub const FILE: &str = "MEMORY.md";

pub fn path(workspace: &Path) -> PathBuf {
    workspace.join(FILE)
}

/// The memory's text (empty when there is none yet), at most `cap` bytes of it.
pub fn read(workspace: &Path, cap: usize) -> std::io::Result<String> {
    match std::fs::read(path(workspace)) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(crate::text::truncate_utf8(&text, cap).to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory is full: {have} bytes used, this note needs {need} more, the limit is {cap}")]
    Full {
        have: usize,
        need: usize,
        cap: usize,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends `note` as a paragraph of its own; returns the file's new size.
pub async fn append(workspace: &Path, note: &str, cap: usize) -> Result<usize, MemoryError> {
    let workspace = workspace.to_path_buf();
    let note = note.replace('\0', "").trim().to_string();
    let joined = tokio::task::spawn_blocking(move || append_blocking(&workspace, &note, cap)).await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(MemoryError::Io {
            path: PathBuf::from(FILE),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

fn append_blocking(workspace: &Path, note: &str, cap: usize) -> Result<usize, MemoryError> {
    let target = path(workspace);
    let io = |source| MemoryError::Io {
        path: target.clone(),
        source,
    };
    let mut text = match std::fs::read(&target) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut addition = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        addition.push('\n');
    }
    addition.push_str(note);
    addition.push('\n');
    if text.len() + addition.len() > cap {
        return Err(MemoryError::Full {
            have: text.len(),
            need: addition.len(),
            cap,
        });
    }
    text.push_str(&addition);
    let tmp = workspace.join(format!(".{FILE}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_atomically_and_refuses_past_the_cap() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path(), 100).unwrap(), "");
        std::fs::write(path(d.path()), "# Memory\nno newline").unwrap();
        append(d.path(), "  first note \0 ", 100).await.unwrap();
        assert_eq!(
            read(d.path(), 100).unwrap(),
            "# Memory\nno newline\nfirst note\n"
        );
        let e = append(d.path(), &"x".repeat(100), 100).await.unwrap_err();
        assert!(e.to_string().contains("memory is full"), "{e}");
        // Nothing half-written, no temporary left behind.
        assert_eq!(read(d.path(), 100).unwrap().len(), 31);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn an_unwritable_workspace_is_an_error() {
        let e = append(Path::new("/nonexistent/ws"), "x", 100)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ws/MEMORY.md"), "{e}");
    }
}
