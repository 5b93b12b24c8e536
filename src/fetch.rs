//! Downloads pinned by digest and cached by digest: `<cache_dir>/downloads/<sha256>` (and
//! `<cache_dir>/downloads/sha512-<hex>` for SHA-512 pins, which Alpine publishes). A file is only
//! ever moved into the cache after its digest matched; a cache hit is hashed again anyway, so a
//! tampered cache is noticed and the file fetched afresh. `file://` URLs and absolute paths work
//! the same way as http(s), so tests and local mirrors need no server.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {algo} mismatch: expected {expected}, got {actual}; the file was discarded")]
    Mismatch {
        url: String,
        algo: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{0:?} is not a digest (sha256: 64 lower-case hex digits, sha512: 128)")]
    BadDigest(String),
    #[error("unsupported URL {0:?}: expected https://, http://, file:// or an absolute path")]
    BadUrl(String),
    #[error("downloading {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for a lowercase hex SHA-512 digest (128 characters).
pub fn is_sha512_hex(s: &str) -> bool {
    s.len() == 128
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Sub-directory of the cache directory holding verified downloads.
pub const DOWNLOADS_DIR: &str = "downloads";

pub fn cached_path(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join(DOWNLOADS_DIR).join(sha256)
}

/// Returns the verified file for `sha256`, downloading it from `url` if it is not cached. Progress
/// goes to `tracing`; [`Cache::fetch`] takes the caller's reporter.
pub fn fetch_verified(url: &str, sha256: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(Cache::new(cache_dir.join(DOWNLOADS_DIR)).fetch(
        url,
        &Pin::Sha256(sha256.to_string()),
        &crate::report::Tracing,
    )?)
}

/// The digest a download must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    Sha256(String),
    Sha512(String),
}

impl Pin {
    /// Checks the hex form, so a typo in a recipe fails before any download.
    pub fn validate(&self) -> Result<(), FetchError> {
        let ok = match self {
            Pin::Sha256(h) => is_sha256_hex(h),
            Pin::Sha512(h) => is_sha512_hex(h),
        };
        if ok {
            Ok(())
        } else {
            Err(FetchError::BadDigest(self.hex().to_string()))
        }
    }

    pub fn algo(&self) -> &'static str {
        match self {
            Pin::Sha256(_) => "sha256",
            Pin::Sha512(_) => "sha512",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Pin::Sha256(h) | Pin::Sha512(h) => h,
        }
    }
}

enum Hasher {
    S256(Sha256),
    S512(Sha512),
}

impl Hasher {
    fn new(pin: &Pin) -> Self {
        match pin {
            Pin::Sha256(_) => Hasher::S256(Sha256::new()),
            Pin::Sha512(_) => Hasher::S512(Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::S256(h) => h.update(b),
            Hasher::S512(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::S256(h) => hex::encode(h.finalize()),
            Hasher::S512(h) => hex::encode(h.finalize()),
        }
    }
}

/// A directory of verified downloads, one file per digest: `<dir>/<algo>/<hex>`.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// Where a pin lives in the cache (whether or not it is there yet).
    pub fn path_for(&self, pin: &Pin) -> PathBuf {
        match pin {
            Pin::Sha256(h) => self.dir.join(h),
            Pin::Sha512(h) => self.dir.join(format!("sha512-{h}")),
        }
    }

    /// The cached file for `pin`, if present and still matching its digest.
    pub fn lookup(&self, pin: &Pin) -> Option<PathBuf> {
        let p = self.path_for(pin);
        if !p.is_file() {
            return None;
        }
        let mut h = Hasher::new(pin);
        let mut f = fs::File::open(&p).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        (h.finish() == pin.hex()).then_some(p)
    }

    /// Returns the cached file for `pin`, downloading `url` first when it is not cached.
    pub fn fetch(&self, url: &str, pin: &Pin, rep: &dyn Reporter) -> Result<PathBuf, FetchError> {
        pin.validate()?;
        if let Some(p) = self.lookup(pin) {
            return Ok(p);
        }
        let final_path = self.path_for(pin);
        let parent = self.dir.clone();
        fs::create_dir_all(&parent).map_err(|source| FetchError::Io {
            what: "creating cache directory",
            path: parent.clone(),
            source,
        })?;
        let tmp = tempfile_in(&parent)?;
        let result = self.download_to(url, pin, &tmp, rep);
        match result {
            Ok(()) => {
                tmp.persist(&final_path).map_err(|e| FetchError::Io {
                    what: "renaming into cache",
                    path: final_path.clone(),
                    source: e.error,
                })?;
                Ok(final_path)
            }
            // `tmp` is dropped here, which deletes the partial or mismatching file.
            Err(e) => Err(e),
        }
    }

    fn download_to(
        &self,
        url: &str,
        pin: &Pin,
        dest: &Path,
        rep: &dyn Reporter,
    ) -> Result<(), FetchError> {
        let io_err = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Io { what, path, source }
        };
        let mut out = fs::File::create(dest).map_err(io_err("writing", dest))?;
        let mut hasher = Hasher::new(pin);
        let (mut reader, len): (Box<dyn Read>, Option<u64>) = open_url(url)?;
        let bar = rep.progress(
            &format!("download {}", url.rsplit('/').next().unwrap_or(url)),
            len,
        );
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_err("reading", Path::new(url)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err("writing", dest))?;
            bar.inc(n as u64);
        }
        out.sync_all().map_err(io_err("syncing", dest))?;
        drop(bar);
        let actual = hasher.finish();
        if actual != pin.hex() {
            return Err(FetchError::Mismatch {
                url: url.to_string(),
                algo: pin.algo(),
                expected: pin.hex().to_string(),
                actual,
            });
        }
        Ok(())
    }
}

/// Prefix of in-progress downloads; the writer's pid follows, so leftovers of a killed process
/// can be told from a download that is still running.
const PARTIAL_PREFIX: &str = ".partial-";

fn tempfile_in(dir: &Path) -> Result<tempfile::TempPath, FetchError> {
    remove_stale_partials(dir);
    tempfile::Builder::new()
        .prefix(&format!("{PARTIAL_PREFIX}{}-", std::process::id()))
        .tempfile_in(dir)
        .map(tempfile::NamedTempFile::into_temp_path)
        .map_err(|source| FetchError::Io {
            what: "creating temporary file in",
            path: dir.to_path_buf(),
            source,
        })
}

/// Deletes partial downloads whose writer no longer runs (killed mid-download: its drop never ran).
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PARTIAL_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn open_url(url: &str) -> Result<(Box<dyn Read>, Option<u64>), FetchError> {
    let local = if let Some(p) = url.strip_prefix("file://") {
        Some(PathBuf::from(p))
    } else if url.starts_with('/') {
        Some(PathBuf::from(url))
    } else {
        None
    };
    if let Some(p) = local {
        let f = fs::File::open(&p).map_err(|source| FetchError::Io {
            what: "opening",
            path: p.clone(),
            source,
        })?;
        let len = f.metadata().ok().map(|m| m.len());
        return Ok((Box::new(f), len));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(FetchError::BadUrl(url.to_string()));
    }
    let resp = ureq::get(url).call().map_err(|e| FetchError::Http {
        url: url.to_string(),
        source: Box::new(e),
    })?;
    let len = resp.body().content_length();
    let reader = resp.into_body().into_reader();
    Ok((Box::new(reader), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_syntax() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"g".repeat(64)));
        assert!(!is_sha256_hex("abc"));
    }

    #[test]
    fn file_url_is_verified_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"payload").unwrap();
        let digest = sha256_hex(b"payload");
        let url = format!("file://{}", src.display());
        let cache = dir.path().join("cache");
        let got = fetch_verified(&url, &digest, &cache).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), b"payload");
        std::fs::remove_file(&src).unwrap();
        // Cached: no source needed any more.
        assert_eq!(fetch_verified(&url, &digest, &cache).unwrap(), got);
    }

    #[test]
    fn wrong_digest_is_refused_and_nothing_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"tampered").unwrap();
        let cache = dir.path().join("cache");
        let err = fetch_verified(
            &format!("file://{}", src.display()),
            &sha256_hex(b"original"),
            &cache,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert_eq!(
            std::fs::read_dir(cache.join("downloads")).unwrap().count(),
            0
        );
    }

    #[test]
    fn bad_urls_and_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fetch_verified("ftp://x/y", &"a".repeat(64), dir.path()).is_err());
        assert!(fetch_verified("file:///etc/hostname", "nothex", dir.path()).is_err());
    }

    #[test]
    fn fetch_verifies_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        fs::write(&src, b"hello").unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let good = Pin::Sha256(sha256_hex(b"hello"));
        let url = format!("file://{}", src.display());
        let p = cache.fetch(&url, &good, &crate::report::Silent).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"hello");
        // Cached: the source can go away.
        fs::remove_file(&src).unwrap();
        assert_eq!(cache.fetch(&url, &good, &crate::report::Silent).unwrap(), p);
    }

    #[test]
    fn wrong_digest_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        fs::write(&src, b"hello").unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let bad = Pin::Sha256(sha256_hex(b"other"));
        let err = cache
            .fetch(src.to_str().unwrap(), &bad, &crate::report::Silent)
            .unwrap_err();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains(&sha256_hex(b"hello")));
        let left: Vec<_> = fs::read_dir(dir.path().join("cache")).unwrap().collect();
        assert!(left.is_empty(), "partial files left: {left:?}");
    }

    #[test]
    fn sha512_pins_work() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.tar.gz");
        fs::write(&src, b"mini").unwrap();
        let pin = Pin::Sha512(hex::encode(Sha512::digest(b"mini")));
        let cache = Cache::new(dir.path().join("cache"));
        let p = cache
            .fetch(src.to_str().unwrap(), &pin, &crate::report::Silent)
            .unwrap();
        assert!(p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sha512-"));
        // A tampered cache entry is not trusted.
        fs::write(&p, b"evil").unwrap();
        assert!(cache.lookup(&pin).is_none());
        assert_eq!(
            fs::read(
                cache
                    .fetch(src.to_str().unwrap(), &pin, &crate::report::Silent)
                    .unwrap()
            )
            .unwrap(),
            b"mini"
        );
    }
}
