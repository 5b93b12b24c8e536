//! The guest's SSH server setup: host key (kept per image in the cache), authorized keys, sshd
//! drop-in.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context as _;

use super::super::common::BuildOptions;
use super::super::recipe::Recipe;
use super::plan::recipe_file;
use super::tree::{create_dirs, resolve_in_tree, set_meta, write_guest_file};

/// The sshd drop-in. Logins are by key only, and every session (each command fireclaw runs) is
/// cheap: no motd, no last-login lookup, and no PAM where the distribution's sshd uses it
/// (Debian's session stack runs `update-motd.d` scripts for every command, which costs a guest
/// under emulation a few hundred milliseconds each time; key-only root logins need nothing from
/// it). `UsePAM` is written only where sshd has a PAM stack: a build without PAM (Alpine's)
/// would log it as an unsupported option.
fn drop_in(root_login: bool, pam: bool) -> String {
    format!(
        "# written by fireclaw image build\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin {}\nUseDNS no\nPrintMotd no\nPrintLastLog no\n{}",
        if root_login { "prohibit-password" } else { "no" },
        if pam { "UsePAM no\n" } else { "" }
    )
}

/// Where the OpenSSH server the `[ssh]` section configures must be once the packages are in.
const SSHD: &str = "/usr/sbin/sshd";

/// Refuses `[ssh]` for a tree without an SSH server: the image would build, and its init would
/// retry the missing sshd forever while nobody can log in.
pub(super) fn check_server(tree: &Path, r: &Recipe) -> anyhow::Result<()> {
    let sshd = resolve_in_tree(tree, SSHD, true)?;
    if !fs::metadata(&sshd).is_ok_and(|m| m.is_file()) {
        anyhow::bail!(
            "{}: image {} has [ssh] but no SSH server: {SSHD} is missing after the packages were \
             installed; add \"openssh-server\" to [packages] install, or drop [ssh]",
            recipe_file(r),
            r.name
        );
    }
    Ok(())
}

/// Installs the SSH host key (kept per image in the cache so rebuilds give the same bytes and
/// clients keep trusting it), the authorized keys and an sshd drop-in. Returns the public host key.
pub(super) fn install(
    opts: &BuildOptions,
    tree: &Path,
    r: &Recipe,
    root_login: bool,
) -> anyhow::Result<String> {
    use russh::keys::ssh_key::{rand_core::OsRng, Algorithm, LineEnding, PrivateKey};
    let dir = opts.cache_dir.join("hostkeys").join(&r.name);
    let key_path = dir.join("ssh_host_ed25519_key");
    let key = match fs::read_to_string(&key_path) {
        Ok(text) => PrivateKey::from_openssh(&text)
            .with_context(|| format!("{}: not an OpenSSH private key", key_path.display()))?,
        Err(_) => {
            fs::create_dir_all(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
            let mut k = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                .context("generating the SSH host key")?;
            k.set_comment(format!("root@{}", r.hostname));
            let text = k.to_openssh(LineEnding::LF).context("encoding host key")?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&key_path)
                .with_context(|| format!("creating {}", key_path.display()))?;
            f.write_all(text.as_bytes())?;
            k
        }
    };
    let private = key.to_openssh(LineEnding::LF)?;
    let public = key.public_key().to_openssh()?;
    write_guest_file(
        tree,
        "/etc/ssh/ssh_host_ed25519_key",
        private.as_bytes(),
        0o600,
        0,
        0,
    )?;
    write_guest_file(
        tree,
        "/etc/ssh/ssh_host_ed25519_key.pub",
        format!("{public}\n").as_bytes(),
        0o644,
        0,
        0,
    )?;
    let pam = resolve_in_tree(tree, "/etc/pam.d/sshd", false)
        .map(|p| p.exists())
        .unwrap_or(false);
    let conf = drop_in(root_login, pam);
    write_guest_file(
        tree,
        "/etc/ssh/sshd_config.d/fireclaw.conf",
        conf.as_bytes(),
        0o644,
        0,
        0,
    )?;
    let keys = format!("{}\n", opts.authorized_keys.join("\n"));
    let mut homes = Vec::new();
    if root_login {
        homes.push(("/root".to_string(), 0, 0));
    }
    for u in r.users.iter().filter(|u| u.ssh) {
        homes.push((
            u.home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name)),
            u.uid,
            u.uid,
        ));
    }
    for (home, uid, gid) in homes {
        let ssh_dir = format!("{home}/.ssh");
        let host = resolve_in_tree(tree, &ssh_dir, true)?;
        create_dirs(tree, &host)?;
        set_meta(&host, 0o700, uid, gid)?;
        write_guest_file(
            tree,
            &format!("{ssh_dir}/authorized_keys"),
            keys.as_bytes(),
            0o600,
            uid,
            gid,
        )?;
    }
    Ok(public)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_turns_pam_off_only_where_sshd_has_it() {
        let debian = drop_in(true, true);
        assert!(debian.contains("PermitRootLogin prohibit-password\n"));
        assert!(debian.contains("UsePAM no\n") && debian.contains("PrintMotd no\n"));
        assert!(debian.contains("PasswordAuthentication no\n"));
        let alpine = drop_in(false, false);
        assert!(!alpine.contains("UsePAM"), "{alpine}");
        assert!(alpine.contains("PermitRootLogin no\n") && alpine.contains("PrintLastLog no\n"));
    }
}
