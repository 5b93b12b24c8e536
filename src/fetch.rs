//! Downloads pinned by SHA-256 and cached by digest: `<cache_dir>/downloads/<sha256>`. A file is
//! only ever moved into the cache after its digest matched, so a cache hit is a verified file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: sha256 mismatch: expected {expected}, got {actual}; the file was discarded")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{0:?} is not a sha256 digest (64 lower-case hex digits)")]
    BadDigest(String),
    #[error("unsupported URL {0:?}: expected https://, http:// or file://")]
    BadUrl(String),
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
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

/// Returns the verified file for `sha256`, downloading it from `url` if it is not cached.
pub fn fetch_verified(url: &str, sha256: &str, cache_dir: &Path) -> anyhow::Result<PathBuf> {
    if !is_sha256_hex(sha256) {
        return Err(FetchError::BadDigest(sha256.to_string()).into());
    }
    let dest = cached_path(cache_dir, sha256);
    if dest.is_file() && sha256_file(&dest)? == sha256 {
        return Ok(dest);
    }
    let dir = cache_dir.join(DOWNLOADS_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".{sha256}.partial"));
    let result = download(url, &partial).and_then(|actual| {
        if actual != sha256 {
            return Err(FetchError::Mismatch {
                url: url.to_string(),
                expected: sha256.to_string(),
                actual,
            }
            .into());
        }
        fs::rename(&partial, &dest)
            .with_context(|| format!("moving download into {}", dest.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result.map(|()| dest)
}

/// Streams `url` into `dest`, hashing as it goes; returns the digest.
fn download(url: &str, dest: &Path) -> anyhow::Result<String> {
    let mut out = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut reader: Box<dyn Read> = if let Some(path) = url.strip_prefix("file://") {
        Box::new(fs::File::open(path).with_context(|| format!("opening {path}"))?)
    } else if url.starts_with("https://") || url.starts_with("http://") {
        let response = ureq::get(url)
            .call()
            .with_context(|| format!("downloading {url}"))?;
        Box::new(response.into_body().into_reader())
    } else {
        return Err(FetchError::BadUrl(url.to_string()).into());
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {url}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    out.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
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
}
