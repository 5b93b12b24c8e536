//! The usage spool: one [`UsageRecord`] per interaction, appended as a JSON line to a file inside
//! the agent's own VM. The host drains it over its own SSH connection to that VM
//! (`fireclaw-guest usage --drain`), so attribution comes from which VM it read, not from anything
//! an agent writes. Appender and drainer hold an exclusive `flock` on the file, so a drain never
//! loses a record appended while it runs.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fireclaw_proto::UsageRecord;
use nix::fcntl::{Flock, FlockArg};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique id for a record made now.
pub fn new_id(at_unix_ms: u64) -> String {
    format!(
        "{at_unix_ms}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn lock(file: File, path: &Path) -> std::io::Result<Flock<File>> {
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::other(format!("locking {}: {e}", path.display())))
}

/// Appends `record` to the spool at `path` (created 0600 with its directory when missing).
pub fn append(path: &Path, record: &UsageRecord) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let mut file = lock(file, path)?;
    file.write_all(&line)?;
    file.flush()
}

/// Writes every record in the spool to `out` and empties the spool, under the lock; the spool is
/// emptied only after `out` took all of it (a failed write leaves the records for the next drain).
/// Returns how many lines were written. Lines that are not records are passed over and logged.
pub fn drain(path: &Path, out: &mut dyn Write) -> std::io::Result<usize> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut file = lock(file, path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut n = 0;
    for line in text.lines() {
        match serde_json::from_str::<UsageRecord>(line) {
            Ok(_) => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                n += 1;
            }
            Err(e) => tracing::warn!(spool = %path.display(), "dropping a bad usage line: {e}"),
        }
    }
    out.flush()?;
    file.set_len(0)?;
    file.rewind()?;
    file.sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            at_unix_ms: 1,
            duration_ms: 2,
            model: "m".into(),
            prompt_eval_count: 3,
            eval_count: 4,
            requests: 1,
            ok: true,
        }
    }

    #[test]
    fn drain_prints_and_empties_then_appends_continue() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("sub/usage.jsonl");
        let mut out = Vec::new();
        assert_eq!(drain(&spool, &mut out).unwrap(), 0);
        append(&spool, &record("a")).unwrap();
        append(&spool, &record("b")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&spool)
            .unwrap()
            .write_all(b"garbage\n")
            .unwrap();
        assert_eq!(drain(&spool, &mut out).unwrap(), 2);
        let got: Vec<UsageRecord> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got, [record("a"), record("b")]);
        assert_eq!(std::fs::metadata(&spool).unwrap().len(), 0);
        append(&spool, &record("c")).unwrap();
        let mut out = Vec::new();
        assert_eq!(drain(&spool, &mut out).unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("pipe closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_drain_keeps_the_records() {
        let d = tempfile::tempdir().unwrap();
        let spool = d.path().join("usage.jsonl");
        append(&spool, &record("a")).unwrap();
        assert!(drain(&spool, &mut Broken).is_err());
        let mut out = Vec::new();
        assert_eq!(drain(&spool, &mut out).unwrap(), 1);
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(5), new_id(5));
    }
}
