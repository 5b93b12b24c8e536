//! Preflight: is this a host fireclaw supports? Each check says what it found and how to fix it.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::plan::{Check, Ctx, Step, StepPlan};

pub struct Preflight;

/// Distributions and releases provision has package lists for (recipes/packages/).
pub const SUPPORTED: &[(&str, &[&str])] =
    &[("debian", &["12", "13"]), ("ubuntu", &["22.04", "24.04"])];

/// Free space wanted under the state directory: images, a kernel and the sparse pool's first blocks.
const MIN_FREE_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
    pub pretty: String,
}

/// Parses os-release(5): KEY=value lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut r = OsRelease {
        id: String::new(),
        version_id: String::new(),
        pretty: String::new(),
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches('"')
            .trim_matches('\'')
            .to_string();
        match key.trim() {
            "ID" => r.id = value,
            "VERSION_ID" => r.version_id = value,
            "PRETTY_NAME" => r.pretty = value,
            _ => {}
        }
    }
    r
}

pub fn os_release(ctx: &Ctx) -> Option<OsRelease> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(ctx.host(p)).ok())
        .map(|t| parse_os_release(&t))
}

fn check(name: &str, ok: bool, detail: String, fix: &str, required: bool) -> Check {
    Check {
        name: name.into(),
        ok,
        detail,
        fix: (!ok).then(|| fix.to_string()),
        required,
    }
}

/// The running kernel's build configuration, from /proc/config.gz or /boot/config-<release>.
fn kernel_config(release: &str) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        if flate2::read::GzDecoder::new(f)
            .read_to_string(&mut text)
            .is_ok()
        {
            return text;
        }
    }
    std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default()
}

/// True if the kernel has `module` loaded, built in (per its config `symbol`), or installed as a
/// loadable module.
fn kernel_has(module: &str, symbol: &str) -> bool {
    if Path::new("/sys/module").join(module).exists() {
        return true;
    }
    let Ok(release) =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned())
    else {
        return false;
    };
    if kernel_config(&release)
        .lines()
        .any(|l| l == format!("{symbol}=y"))
    {
        return true;
    }
    let base = Path::new("/lib/modules").join(&release);
    let builtin = std::fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    let listed = std::fs::read_to_string(base.join("modules.dep")).unwrap_or_default();
    let needle = format!("/{module}.ko");
    builtin.contains(&needle)
        || listed
            .lines()
            .any(|l| l.split(':').next().is_some_and(|p| p.contains(&needle)))
}

fn free_bytes(mut path: &Path) -> Option<u64> {
    // The state directory may not exist yet: measure the nearest ancestor that does.
    loop {
        if let Ok(st) = nix::sys::statvfs::statvfs(path) {
            return Some(st.blocks_available() * st.fragment_size());
        }
        path = path.parent()?;
    }
}

/// The root prefix must be a directory provision can write to; a missing or read-only `--root`
/// would otherwise fail at the first write, after the dry-run said all was well.
fn root_check(ctx: &Ctx) -> Option<Check> {
    let dir = ctx.root.dir();
    let problem = match std::fs::metadata(dir) {
        Err(e) => Some(format!(
            "{}: {}",
            dir.display(),
            crate::fsops::io_reason(&e)
        )),
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_)
            if ctx.privileged
                && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() =>
        {
            Some(format!(
                "{} is not writable (a read-only file system?)",
                dir.display()
            ))
        }
        Ok(_) => None,
    }?;
    let flag = if ctx.root.is_system() {
        "the root directory"
    } else {
        "--root"
    };
    Some(check(
        "root prefix",
        false,
        problem,
        &format!("{flag} must name an existing, writable directory: create it, remount it read-write, or pass another --root"),
        true,
    ))
}

pub fn checks(ctx: &Ctx) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(root_check(ctx));
    let os = os_release(ctx);
    let supported = os.as_ref().is_some_and(|os| {
        SUPPORTED
            .iter()
            .any(|(id, versions)| *id == os.id && versions.contains(&os.version_id.as_str()))
    });
    out.push(check(
        "distribution",
        supported,
        match &os {
            Some(os) => format!("{} (ID={}, VERSION_ID={})", os.pretty, os.id, os.version_id),
            None => "no /etc/os-release".into(),
        },
        "fireclaw supports Debian 12/13 and Ubuntu 22.04/24.04; run it on one of those",
        true,
    ));
    let arch = std::env::consts::ARCH;
    out.push(check(
        "architecture",
        matches!(arch, "x86_64" | "aarch64"),
        arch.into(),
        "Firecracker runs on x86_64 and aarch64 only",
        true,
    ));
    let kvm = std::fs::metadata("/dev/kvm");
    let kvm_ok = kvm.as_ref().is_ok_and(|m| m.file_type().is_char_device());
    let kvm_open = kvm_ok
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    out.push(check(
        "/dev/kvm",
        kvm_ok,
        match (kvm_ok, kvm_open) {
            (true, true) => "present and usable".into(),
            (true, false) => "present (not openable by this user; root or the kvm group can)".into(),
            _ => "missing".into(),
        },
        "enable virtualization (VT-x/AMD-V) in the firmware, then `modprobe kvm_intel` or `modprobe kvm_amd`; in a cloud VM, pick an instance type with nested virtualization",
        true,
    ));
    out.push(check(
        "tun",
        Path::new("/dev/net/tun").exists(),
        if Path::new("/dev/net/tun").exists() {
            "/dev/net/tun present".into()
        } else {
            "/dev/net/tun missing".into()
        },
        "`modprobe tun` (kernel option CONFIG_TUN)",
        true,
    ));
    for (module, symbol, required, fix) in [
        ("bridge", "CONFIG_BRIDGE", true, "`modprobe bridge` (CONFIG_BRIDGE)"),
        ("nf_tables", "CONFIG_NF_TABLES", true, "`modprobe nf_tables` (CONFIG_NF_TABLES), or install a kernel with nftables"),
        ("dm_thin_pool", "CONFIG_DM_THIN_PROVISIONING", false, "`modprobe dm_thin_pool` (package dmsetup; kernel CONFIG_DM_THIN_PROVISIONING); without it VM disks are reflink/sparse copies"),
        ("vhost_vsock", "CONFIG_VHOST_VSOCK", false, "`modprobe vhost_vsock`; without it agents use SSH only"),
    ] {
        let present = kernel_has(module, symbol);
        out.push(check(
            &format!("kernel: {module}"),
            present,
            if present { "available".into() } else { "not available".into() },
            fix,
            required,
        ));
    }
    let state = ctx.host(&ctx.config.paths.state_dir);
    let free = free_bytes(&state);
    out.push(check(
        "disk space",
        free.is_some_and(|f| f >= MIN_FREE_BYTES),
        match free {
            Some(f) => format!("{:.1} GiB free for {}", f as f64 / (1u64 << 30) as f64, ctx.config.paths.state_dir),
            None => "cannot measure".into(),
        },
        "free at least 4 GiB on the file system holding paths.state_dir, or point it elsewhere in fireclaw.toml",
        true,
    ));
    out.push(check(
        "privileges",
        ctx.privileged,
        if ctx.privileged {
            "running as root".into()
        } else {
            "not root: dry-run only".into()
        },
        "run `sudo fireclaw provision` to apply",
        false,
    ));
    out
}

impl Step for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }

    fn summary(&self) -> &'static str {
        "distribution, architecture, /dev/kvm, kernel features, disk space"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        Ok(StepPlan {
            checks: checks(ctx),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing_handles_quotes_and_junk() {
        let r = parse_os_release(
            "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nVERSION_ID=\"24.04\"\ngarbage line\n=\n",
        );
        assert_eq!(r.id, "ubuntu");
        assert_eq!(r.version_id, "24.04");
        assert_eq!(r.pretty, "Ubuntu 24.04 LTS");
        let empty = parse_os_release("\u{0}\u{1}binary");
        assert_eq!(empty.id, "");
    }
}
