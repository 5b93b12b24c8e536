//! The VM engines and the `vm::Host` a command works with, as provision installed them and the
//! environment overrides them. Commands read environment variables here and hand explicit
//! options down; the library reads none.

use anyhow::Context as _;

use crate::commands::Env;
use crate::vm::Host;
use crate::vmm::firecracker::Jailer;
use crate::vmm::qemu::{Accel, QemuOptions};
use crate::vmm::{EngineOptions, VmmKind};

/// The library's view of this host for `env`: root, configuration, database, engines.
pub fn host(env: &Env) -> anyhow::Result<Host> {
    Ok(Host {
        root: env.root.clone(),
        config: env.config.clone(),
        db_path: env.db_path(),
        engines: engine_options(env)?,
    })
}

/// The engines as provision installed them, with the environment's overrides:
/// `FIRECLAW_FIRECRACKER=PATH` (the binary) and `FIRECLAW_JAILER=UID:GID` (run it under
/// `<bin_dir>/jailer`, chroots in /srv/jailer, the jailer's default).
pub fn engine_options(env: &Env) -> anyhow::Result<EngineOptions> {
    engine_options_from(&env.root.host(&env.config.paths.bin_dir), |k| {
        std::env::var_os(k)
    })
}

fn engine_options_from(
    bin_dir: &std::path::Path,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> anyhow::Result<EngineOptions> {
    let mut opts = EngineOptions::installed(bin_dir);
    opts.qemu = qemu_options(&var)?;
    if let Some(fc) = var("FIRECLAW_FIRECRACKER") {
        opts.firecracker.binary = fc.into();
    }
    if let Some(v) = var("FIRECLAW_JAILER") {
        let v = v.to_string_lossy();
        let ids = v
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
        let Some((uid, gid)) = ids else {
            anyhow::bail!("FIRECLAW_JAILER must be UID:GID (two numbers), got {v:?}");
        };
        opts.firecracker.jailer = Some(Jailer {
            binary: bin_dir.join("jailer"),
            uid,
            gid,
            chroot_base: "/srv/jailer".into(),
        });
    }
    Ok(opts)
}

/// The QEMU settings `fireclaw run` takes from its environment (documented in docs/run.md):
/// `FIRECLAW_QEMU` (the binary), `FIRECLAW_QEMU_ACCEL=kvm|tcg`, `FIRECLAW_QEMU_ACPI=on|off`.
fn qemu_options(var: &impl Fn(&str) -> Option<std::ffi::OsString>) -> anyhow::Result<QemuOptions> {
    let text = |k: &str| var(k).map(|v| v.to_string_lossy().into_owned());
    let mut o = QemuOptions::default();
    if let Some(b) = var("FIRECLAW_QEMU").filter(|b| !b.is_empty()) {
        o.binary = b.into();
    }
    if let Some(a) = text("FIRECLAW_QEMU_ACCEL").filter(|a| !a.is_empty()) {
        o.accel = Some(Accel::parse(&a).with_context(|| {
            format!("FIRECLAW_QEMU_ACCEL is {a:?}; expected `kvm` or `tcg` (or unset to detect)")
        })?);
    }
    if let Some(v) = text("FIRECLAW_QEMU_ACPI") {
        o.acpi = match v.as_str() {
            "on" | "" => true,
            "off" => false,
            other => anyhow::bail!("FIRECLAW_QEMU_ACPI is {other:?}; expected `on` or `off`"),
        };
    }
    Ok(o)
}

pub fn default_vmm(env: &Env) -> VmmKind {
    let fc = env.root.host(&env.config.paths.bin_dir).join("firecracker");
    if fc.exists() {
        VmmKind::Firecracker
    } else {
        VmmKind::Qemu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_options_come_from_the_caller_and_bad_jailer_ids_are_errors() {
        let bin = std::path::Path::new("/opt/fc");
        let none = engine_options_from(bin, |_| None).unwrap();
        assert_eq!(none.firecracker.binary, bin.join("firecracker"));
        assert!(none.firecracker.jailer.is_none());
        let set = engine_options_from(bin, |k| match k {
            "FIRECLAW_FIRECRACKER" => Some("/x/firecracker-v1.16.1-x86_64".into()),
            "FIRECLAW_JAILER" => Some("123:456".into()),
            _ => None,
        })
        .unwrap();
        let j = set.firecracker.jailer.unwrap();
        assert_eq!((j.uid, j.gid, j.binary), (123, 456, bin.join("jailer")));
        assert_eq!(
            set.firecracker.binary,
            std::path::PathBuf::from("/x/firecracker-v1.16.1-x86_64")
        );
        for bad in ["123", "a:b", "1:2:3", ""] {
            let e = engine_options_from(bin, |k| (k == "FIRECLAW_JAILER").then(|| bad.into()))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("FIRECLAW_JAILER must be UID:GID"), "{bad}: {e}");
        }
    }

    #[test]
    fn qemu_environment_becomes_explicit_options() {
        use crate::vmm::qemu::{Accel, QemuOptions};
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            super::qemu_options(&env(&[])).unwrap(),
            QemuOptions::default()
        );
        let o = super::qemu_options(&env(&[
            ("FIRECLAW_QEMU", "/opt/qemu"),
            ("FIRECLAW_QEMU_ACCEL", "tcg"),
            ("FIRECLAW_QEMU_ACPI", "off"),
        ]))
        .unwrap();
        assert_eq!(o.binary, std::path::PathBuf::from("/opt/qemu"));
        assert_eq!(o.accel, Some(Accel::Tcg));
        assert!(!o.acpi);
        for (k, v) in [("FIRECLAW_QEMU_ACCEL", "hvf"), ("FIRECLAW_QEMU_ACPI", "no")] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(k, v)]));
            let err = super::qemu_options(&env(pairs)).unwrap_err().to_string();
            assert!(err.contains(k) && err.contains(v), "{err}");
        }
    }
}
