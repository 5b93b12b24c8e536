//! The SSH key pair fireclaw uses to reach its guests.

use std::path::Path;

use anyhow::Context as _;
use russh::keys::ssh_key::{rand_core::OsRng, Algorithm, LineEnding, PrivateKey};

use crate::fsops;

/// Generates an ed25519 key pair in OpenSSH format: `path` (0600) and `path.pub` (0644). No
/// passphrase: the runtime uses it unattended; the file mode is what protects it.
pub fn generate_ed25519(path: &Path, comment: &str) -> anyhow::Result<()> {
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).context("generating ed25519 key")?;
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .context("encoding private key")?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding public key")?;
    // Public half first: a crash between the two writes leaves no private key without its pair.
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fsops::write_atomic(
        Path::new(&pub_path),
        format!("{public}\n").as_bytes(),
        0o644,
    )?;
    fsops::write_atomic(path, private.as_bytes(), 0o600)
}

/// The public half of the OpenSSH private key at `path`, as one `authorized_keys` line.
pub fn public_half(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading private key {}", path.display()))?;
    let key = PrivateKey::from_openssh(&text)
        .with_context(|| format!("{} is not an OpenSSH private key", path.display()))?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding public key")?;
    Ok(format!("{public}\n"))
}

/// Writes `path.pub` (0644) from the private key at `path`, which is left untouched.
pub fn write_public_half(path: &Path) -> anyhow::Result<()> {
    let public = public_half(path)?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fsops::write_atomic(Path::new(&pub_path), public.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_a_loadable_pair_with_tight_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        generate_ed25519(&path, "fireclaw").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let key = PrivateKey::from_openssh(&text).unwrap();
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
        assert!(public.starts_with("ssh-ed25519 ") && public.trim_end().ends_with("fireclaw"));
        assert_eq!(key.public_key().to_openssh().unwrap(), public.trim_end());
    }
}
