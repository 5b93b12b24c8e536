//! Image-test helpers: a minirootfs-shaped tarball and image inspection without mounting.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{have, is_root};

pub const BUSYBOX: &str = "/bin/busybox";

pub fn host_prereqs() -> Vec<(&'static str, bool)> {
    vec![
        ("root", is_root()),
        ("mkfs.ext4", have("mkfs.ext4")),
        ("e2fsck", have("e2fsck")),
        ("debugfs", have("debugfs")),
        ("chroot", have("chroot")),
        (
            "busybox-static at /bin/busybox",
            is_static(Path::new(BUSYBOX)),
        ),
    ]
}

/// A static binary has no program interpreter: no PT_INTERP (type 3) entry in its ELF program
/// headers. Read directly, so the check needs no `file` or `ldd`.
fn is_static(p: &Path) -> bool {
    let Ok(b) = fs::read(p) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
    })
}

/// Runs `debugfs -R <request> <image>` and returns its stdout (no mounting needed).
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("running debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree shaped like an Alpine minirootfs: busybox with absolute applet links, etc/alpine-release,
/// passwd/group/shadow, and an `sbin/apk` that records what it was asked to install and which of
/// its repositories it can read an index from (and drops a stand-in sshd), so the package step
/// runs for real in a chroot without a mirror.
pub fn minirootfs_tree(dir: &Path) -> PathBuf {
    let t = dir.join("minirootfs");
    for d in [
        "bin", "sbin", "etc/apk", "usr/bin", "usr/sbin", "var/log", "dev", "proc", "sys", "root",
        "tmp", "home", "lib",
    ] {
        fs::create_dir_all(t.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, t.join("bin/busybox")).unwrap();
    for applet in ["sh", "mkdir", "chmod", "echo", "cat", "ls", "mount", "ln"] {
        std::os::unix::fs::symlink("/bin/busybox", t.join("bin").join(applet)).unwrap();
    }
    // Alpine's init is a busybox link; the recipe replaces it and must not write through it.
    std::os::unix::fs::symlink("/bin/busybox", t.join("sbin/init")).unwrap();
    fs::write(t.join("etc/alpine-release"), "3.24.2\n").unwrap();
    fs::write(
        t.join("etc/apk/repositories"),
        "https://mirror.invalid/alpine/v3.24/main\n",
    )
    .unwrap();
    fs::write(
        t.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:22:22:sshd:/dev/null:/sbin/nologin\n",
    )
    .unwrap();
    fs::write(
        t.join("etc/group"),
        "root:x:0:root\nshadow:x:42:\nsshd:x:22:\nwheel:x:10:root\n",
    )
    .unwrap();
    fs::write(t.join("etc/shadow"), "root:*:19000:0:::::\n").unwrap();
    fs::write(
        t.join("sbin/apk"),
        "#!/bin/sh\n# stand-in for apk: records the request, installs a fake sshd\n\
         echo \"apk $*\" >> /var/log/fake-apk.log\n\
         [ -e /dev/null ] || exit 3\n\
         for r in $(cat /etc/apk/repositories); do\n\
           [ -f \"$r/x86_64/APKINDEX.tar.gz\" ] && echo \"index $r\" >> /var/log/fake-apk.log\n\
         done\n\
         mkdir -p /usr/sbin /etc/ssh\n\
         echo '#!/bin/sh' > /usr/sbin/sshd\n\
         chmod 755 /usr/sbin/sshd\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(t.join("sbin/apk"), fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Packs `tree` into a .tar.gz (owner root) and returns its path and sha256.
pub fn tarball(tree: &Path, out: &Path) -> (PathBuf, String) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", tree).unwrap();
    b.into_inner().unwrap().finish().unwrap();
    let sha = fireclaw::fetch::sha256_file(out).unwrap();
    (out.to_path_buf(), sha)
}

/// An ed25519 public key line for authorized_keys.
pub const TEST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhY0qqtj8cvCqXq6gG5rW0o1ZsxJ0i7XhnS2b0q6n5C fireclaw-test";

/// A directory shaped like an Alpine mirror (`<branch>/releases/x86_64/<minirootfs>`,
/// `<branch>/{main,community}/x86_64/APKINDEX.tar.gz`) holding `tarball`; returns the mirror root
/// and the minirootfs URL relative to it.
pub fn local_mirror(dir: &Path, tarball: &Path) -> (PathBuf, &'static str) {
    const REL: &str = "v3.24/releases/x86_64/alpine-minirootfs-3.24.2-x86_64.tar.gz";
    let m = dir.join("mirror");
    fs::create_dir_all(m.join(REL).parent().unwrap()).unwrap();
    fs::copy(tarball, m.join(REL)).unwrap();
    for repo in ["main", "community"] {
        let d = m.join("v3.24").join(repo).join("x86_64");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("APKINDEX.tar.gz"), b"index").unwrap();
    }
    (m, REL)
}
