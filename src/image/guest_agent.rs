//! The guest agent binary that `builtin = "guest-agent"` files install: the workspace's static
//! musl build of `fireclaw-guest`, never the host's own fireclaw (a glibc binary that would not
//! even start in an Alpine guest).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The musl target the guest agent is built for.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// How to build it, for error messages.
pub const BUILD_HINT: &str =
    "cargo build --release -p fireclaw-guest --target x86_64-unknown-linux-musl";

/// Where the musl build lands under a cargo target directory.
pub fn under_target_dir(target_dir: &Path) -> PathBuf {
    target_dir
        .join(TARGET)
        .join("release")
        .join("fireclaw-guest")
}

/// The guest agent for a fireclaw running as `exe`: the musl build in the target directory `exe`
/// was built in (any ancestor of `target/debug/fireclaw` or `target/debug/deps/<test>`), else in
/// the checkout this fireclaw was compiled from, else a `fireclaw-guest` installed beside it.
/// `None` when there is none: callers then require `--guest-agent`.
pub fn find(exe: &Path) -> Option<PathBuf> {
    let from_exe = exe.ancestors().skip(1).map(under_target_dir);
    let from_checkout = std::iter::once(under_target_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    ));
    let beside = exe.parent().map(|d| d.join("fireclaw-guest"));
    from_exe
        .chain(from_checkout)
        .chain(beside)
        .find(|p| p.is_file())
}

/// There is no usable guest agent: none was found, or the one found is not a static binary.
/// Typed so that provision can show it as a blocked step with the fix rather than fail planning.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Why there is no guest agent to install, with how to get one.
pub fn missing(recipe_file: &str, dest: &str) -> anyhow::Error {
    Unavailable(format!(
        "{recipe_file}: files {dest} (builtin = \"guest-agent\"): no guest agent binary found; \
         build it with `{BUILD_HINT}` (it lands in target/{TARGET}/release/fireclaw-guest), \
         install it beside fireclaw (install.sh does both), or pass --guest-agent PATH"
    ))
    .into()
}

/// Reads the guest agent and refuses anything that is not a statically linked x86-64 ELF: a
/// dynamically linked binary would need the host's libc inside the guest.
pub fn read_static(p: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = fs::read(p).with_context(|| format!("reading guest agent {}", p.display()))?;
    if let Err(why) = check_static_elf(&bytes) {
        return Err(Unavailable(format!(
            "guest agent {}: {why}; the guest needs a static binary: build it with `{BUILD_HINT}`",
            p.display()
        ))
        .into());
    }
    Ok(bytes)
}

/// `Ok` for a statically linked x86-64 ELF (static-pie included: it has a dynamic section for
/// self-relocation but no interpreter and no DT_NEEDED); otherwise why not.
pub fn check_static_elf(b: &[u8]) -> Result<(), String> {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if b.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF binary".into());
    }
    // 64-bit, little-endian, x86-64.
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) || u16_at(18) != Some(62) {
        return Err("not an x86-64 ELF binary".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let phoff = u64_at(32).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(54).ok_or_else(truncated)? as usize;
    let phnum = u16_at(56).ok_or_else(truncated)? as usize;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let kind = u32_at(o).ok_or_else(truncated)?;
        if kind == PT_INTERP {
            return Err("dynamically linked (it has a program interpreter)".into());
        }
        if kind == PT_DYNAMIC {
            let off = u64_at(o + 8).ok_or_else(truncated)? as usize;
            let size = u64_at(o + 32).ok_or_else(truncated)? as usize;
            for e in (off..off.saturating_add(size)).step_by(16) {
                match u64_at(e) {
                    Some(DT_NEEDED) => {
                        return Err("dynamically linked (it needs shared libraries)".into())
                    }
                    Some(DT_NULL) | None => break,
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_and_scripts_are_refused() {
        // /bin/sh on Debian is dynamically linked against glibc.
        let sh = fs::read("/bin/sh").unwrap();
        assert!(check_static_elf(&sh)
            .unwrap_err()
            .contains("dynamically linked"));
        assert!(check_static_elf(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("not an ELF"));
        assert!(check_static_elf(b"\x7fELF\x02\x01")
            .unwrap_err()
            .contains("x86-64"));
    }

    #[test]
    fn the_running_test_binary_is_refused() {
        // The host build links glibc dynamically: exactly what must never land in a guest.
        let me = std::env::current_exe().unwrap();
        let e = read_static(&me).unwrap_err().to_string();
        assert!(
            e.contains("dynamically linked") && e.contains(BUILD_HINT),
            "{e}"
        );
    }

    #[test]
    fn found_beside_the_target_dir_of_the_executable() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("target/debug/deps/fireclaw-1234");
        fs::create_dir_all(exe.parent().unwrap()).unwrap();
        let want = under_target_dir(&d.path().join("target"));
        fs::create_dir_all(want.parent().unwrap()).unwrap();
        fs::write(&want, b"x").unwrap();
        assert_eq!(find(&exe), Some(want));
    }
}
