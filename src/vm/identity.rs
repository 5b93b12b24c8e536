//! A clone is not a twin. A VM restored from a snapshot wakes with the snapshot's wall clock, the
//! snapshot's kernel RNG state, machine-id and hostname, and neighbour entries from before. This
//! module writes the guest-side fix-up: a POSIX `sh` script, run as root over the VM's SSH
//! channel right after restore, that works with busybox and with Debian's coreutils/iproute2.
//!
//! What the script cannot do:
//! - Credit entropy. Writing to `/dev/urandom` mixes the bytes into the input pool but credits
//!   nothing, and since Linux 5.18 the CRNG only picks them up at its next reseed. Crediting and
//!   an immediate reseed need the `RNDADDENTROPY` and `RNDRESEEDCRNG` ioctls (CAP_SYS_ADMIN), which
//!   no shell tool makes; the guest agent (`fireclaw-guest`, running as root) can issue both, and
//!   should when it is the one applying this. Firecracker's VMGenID reseeds guests from 5.18 on
//!   ACPI by itself; QEMU guests have nothing of the kind.
//! - Change `boot_id`: `/proc/sys/kernel/random/boot_id` is fixed per boot, so clones of one
//!   snapshot share it. Consumers that need a per-clone id should read machine-id.

use std::time::{SystemTime, UNIX_EPOCH};

/// The fresh identity a clone gets after a restore.
#[derive(Debug, Clone)]
pub struct CloneIdentity<'a> {
    /// The host's current time.
    pub now: SystemTime,
    /// Fresh random bytes from the host (at least [`MIN_SEED_BYTES`]).
    pub seed: &'a [u8],
    /// 32 lowercase hexadecimal digits, not all zero (systemd's machine-id format).
    pub machine_id: &'a str,
    /// 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
    pub hostname: &'a str,
}

/// Fewer bytes than this would not give the guest's RNG 256 bits of new state.
pub const MIN_SEED_BYTES: usize = 32;
/// More than this makes a needlessly long command line for nothing.
pub const MAX_SEED_BYTES: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("hostname {0:?}: expected 1 to 63 characters of a-z, 0-9 and `-`, not starting or ending with `-`")]
    Hostname(String),
    #[error("machine-id {0:?}: expected 32 lowercase hexadecimal digits, not all zero")]
    MachineId(String),
    #[error("seed: expected {MIN_SEED_BYTES} to {MAX_SEED_BYTES} random bytes, got {0}")]
    Seed(usize),
    #[error("the host clock is before 1970")]
    Clock,
}

pub fn validate_hostname(name: &str) -> Result<(), IdentityError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Hostname(name.to_string()))
    }
}

pub fn validate_machine_id(id: &str) -> Result<(), IdentityError> {
    let ok = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::MachineId(id.to_string()))
    }
}

/// A new machine-id from 16 random bytes, shaped as systemd makes them (a version-4 UUID
/// without dashes).
pub fn machine_id_from(bytes: [u8; 16]) -> String {
    let mut b = bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hex::encode(b)
}

/// Owned inputs for one clone, drawn from the host's OS RNG: the impure half, kept tiny.
#[derive(Debug, Clone)]
pub struct FreshInputs {
    pub seed: [u8; 64],
    pub machine_id: String,
    pub hostname: String,
}

impl FreshInputs {
    /// Inputs for the clone with VM id `vm_id` (hostname `fc-<id>`).
    pub fn for_vm(vm_id: &str) -> Result<FreshInputs, IdentityError> {
        use rand::RngCore as _;
        let hostname = format!("fc-{vm_id}");
        validate_hostname(&hostname)?;
        let mut seed = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Ok(FreshInputs {
            seed,
            machine_id: machine_id_from(id),
            hostname,
        })
    }

    /// The identity at `now` (take it just before sending the script).
    pub fn at(&self, now: SystemTime) -> CloneIdentity<'_> {
        CloneIdentity {
            now,
            seed: &self.seed,
            machine_id: &self.machine_id,
            hostname: &self.hostname,
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for `secs` since the epoch: the one `date -s` format GNU date and
/// busybox date both accept (busybox has no `@SECONDS` in every build).
fn utc_datetime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A static x86-64 Linux program, 193 bytes, that unlinks itself (its `argv[0]`), then issues
/// `ioctl(open("/dev/urandom"), RNDRESEEDCRNG)` and exits with 0 or the errno. Writing bytes to
/// `/dev/urandom` only mixes them into the input pool; the CRNG that `getrandom` and
/// `/proc/sys/kernel/random/uuid` draw from takes them at its next reseed, so two clones keep
/// drawing identical numbers until then. The ioctl reseeds at once (Linux >= 4.17,
/// CAP_SYS_ADMIN), but nothing in a minimal guest (shell, coreutils, busybox) can issue it, so the
/// script writes this program and runs it. It removes itself because every process the script
/// starts costs a clone tens of milliseconds under emulation: an `rm` would be one more.
pub fn reseed_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let code: [u8; 60] = [
        0x48, 0x8b, 0x7c, 0x24, 0x08, // mov rdi, [rsp + 8]: argv[0]
        0xb8, 0x57, 0x00, 0x00, 0x00, // mov eax, SYS_unlink (its result does not matter)
        0x0f, 0x05, // syscall
        0x48, 0x8d, 0x3d, 0x29, 0x00, 0x00, 0x00, // lea rdi, [rip + 41]: the path
        0xbe, 0x01, 0x00, 0x00, 0x00, // mov esi, O_WRONLY
        0x31, 0xd2, // xor edx, edx
        0xb8, 0x02, 0x00, 0x00, 0x00, // mov eax, SYS_open
        0x0f, 0x05, // syscall
        0x89, 0xc7, // mov edi, eax (a failed open makes the ioctl fail with EBADF)
        0xbe, 0x07, 0x52, 0x00, 0x00, // mov esi, RNDRESEEDCRNG = _IO('R', 7)
        0x31, 0xd2, // xor edx, edx
        0xb8, 0x10, 0x00, 0x00, 0x00, // mov eax, SYS_ioctl
        0x0f, 0x05, // syscall
        0x89, 0xc7, // mov edi, eax
        0xf7, 0xdf, // neg edi: 0, or the errno
        0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, SYS_exit
        0x0f, 0x05, // syscall
    ];
    let path = b"/dev/urandom\0";
    let size = HEADERS + code.len() as u64 + path.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry: the code
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for word in [0, BASE, BASE, size, size, 0x1000u64] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    elf.extend_from_slice(path);
    elf
}

/// The script that gives a restored clone its own identity. Every value in it has been
/// validated to a fixed alphabet, so nothing needs quoting beyond the single quotes used.
/// It stops at the first failure (`set -eu`), so a non-zero exit says which step broke.
pub fn refresh_script(id: &CloneIdentity) -> Result<String, IdentityError> {
    validate_hostname(id.hostname)?;
    validate_machine_id(id.machine_id)?;
    if !(MIN_SEED_BYTES..=MAX_SEED_BYTES).contains(&id.seed.len()) {
        return Err(IdentityError::Seed(id.seed.len()));
    }
    let secs = id
        .now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IdentityError::Clock)?
        .as_secs();
    let when = utc_datetime(secs);
    let seed = hex::encode(id.seed);
    let (machine_id, hostname) = (id.machine_id, id.hostname);
    let reseed: String = reseed_program()
        .iter()
        .map(|b| format!("\\{b:03o}"))
        .collect();
    Ok(format!(
        "set -eu\n\
         # The wall clock stopped when the snapshot was taken.\n\
         date -u -s '{when}' >/dev/null\n\
         # Mixed into the input pool, not credited (that needs RNDADDENTROPY).\n\
         printf '%s\\n' '{seed}' >/dev/urandom\n\
         # The CRNG picks the bytes up only at its next reseed (up to a minute away), so clones\n\
         # would hand out the same random numbers until then: force the reseed now with\n\
         # RNDRESEEDCRNG, through a tiny static program (no guest tool issues that ioctl).\n\
         r=/run/fireclaw-reseed.$$\n\
         printf '{reseed}' >\"$r\"\n\
         chmod 700 \"$r\"\n\
         # It removes itself as it starts.\n\
         \"$r\" || {{ rc=$?; rm -f \"$r\"; echo \"reseeding the CRNG failed (errno $rc)\" >&2; exit 1; }}\n\
         # Written in place, not renamed over: a clone is thrown away if this is cut short, and\n\
         # every `mv` would be one more process.\n\
         printf '%s\\n' '{machine_id}' >/etc/machine-id\n\
         printf '%s\\n' '{hostname}' >/proc/sys/kernel/hostname\n\
         printf '%s\\n' '{hostname}' >/etc/hostname\n\
         # Neighbours learnt before the snapshot may have moved (a clone's gateway is new).\n\
         ip neigh flush all\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn identity<'a>(hostname: &'a str, machine_id: &'a str, seed: &'a [u8]) -> CloneIdentity<'a> {
        CloneIdentity {
            now: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            seed,
            machine_id,
            hostname,
        }
    }

    const MID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn script_sets_every_part() {
        let seed = [0xa5u8; 32];
        let s = refresh_script(&identity("clone-7", MID, &seed)).unwrap();
        assert!(s.starts_with("set -eu\n"));
        assert!(s.contains("date -u -s '2026-11-18 11:06:40'"), "{s}");
        assert!(s.contains(&format!("'{}' >/dev/urandom", "a5".repeat(32))));
        assert!(s.contains(&format!("'{MID}' >/etc/machine-id\n")));
        assert!(s.contains("'clone-7' >/etc/hostname\n"));
        // Each process costs a clone tens of milliseconds under emulation: only these three.
        let commands: Vec<&str> = s
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("printf") && !l.starts_with("set "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            commands,
            ["date", "r=/run/fireclaw-reseed.$$", "chmod", "\"$r\"", "ip"],
            "{s}"
        );
        assert!(s.contains("'clone-7' >/proc/sys/kernel/hostname"));
        assert!(s.contains("ip neigh flush all"));
    }

    #[test]
    fn the_reseed_program_runs_and_reaches_the_ioctl() {
        let p = reseed_program();
        assert_eq!(p.len(), 193);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reseed");
        std::fs::write(&path, &p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let code = std::process::Command::new(&path).status().unwrap().code();
        // Root reseeds (0); anyone else gets EPERM (1): either way the ioctl was issued.
        let expected = if nix::unistd::geteuid().is_root() {
            0
        } else {
            1
        };
        assert_eq!(code, Some(expected));
        assert!(!path.exists(), "the program removes itself");
        // Printed as octal escapes for the script's printf.
        let s = refresh_script(&identity("c", MID, &[1u8; 32])).unwrap();
        assert!(s.contains("printf '\\177\\105\\114\\106\\002"), "{s}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_datetime(4_102_444_799), "2099-12-31 23:59:59");
        assert_eq!(utc_datetime(1_709_251_199), "2024-02-29 23:59:59");
    }

    #[test]
    fn hostile_hostnames_are_refused() {
        let seed = [1u8; 32];
        for bad in [
            "",
            "-lead",
            "trail-",
            "UPPER",
            "a.b",
            "a b",
            "a'b",
            "a;reboot",
            "$(reboot)",
            "`id`",
            "a\nb",
            "a\\b",
            "ä",
            &"a".repeat(64),
        ] {
            let err = refresh_script(&identity(bad, MID, &seed)).unwrap_err();
            assert_eq!(err, IdentityError::Hostname(bad.to_string()), "{bad:?}");
        }
        assert!(refresh_script(&identity(&"a".repeat(63), MID, &seed)).is_ok());
    }

    #[test]
    fn hostile_machine_ids_and_seeds_are_refused() {
        let seed = [1u8; 32];
        for bad in [
            "",
            "00000000000000000000000000000000",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef'123456789abcdef",
        ] {
            assert!(
                refresh_script(&identity("h", bad, &seed)).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            refresh_script(&identity("h", MID, &[0u8; 31])).unwrap_err(),
            IdentityError::Seed(31)
        );
        assert!(refresh_script(&identity("h", MID, &[0u8; 513])).is_err());
        let before = CloneIdentity {
            now: UNIX_EPOCH - Duration::from_secs(1),
            ..identity("h", MID, &seed)
        };
        assert_eq!(refresh_script(&before).unwrap_err(), IdentityError::Clock);
    }

    #[test]
    fn machine_ids_are_v4_shaped_and_valid() {
        let id = machine_id_from([0xff; 16]);
        assert_eq!(id.len(), 32);
        assert_eq!(&id[12..13], "4");
        assert!(validate_machine_id(&id).is_ok());
        assert!(validate_machine_id(&machine_id_from([0; 16])).is_ok());
    }

    #[test]
    fn fresh_inputs_differ_and_validate() {
        let a = FreshInputs::for_vm("0123456789ab").unwrap();
        let b = FreshInputs::for_vm("0123456789ab").unwrap();
        assert_eq!(a.hostname, "fc-0123456789ab");
        assert_ne!(a.machine_id, b.machine_id);
        assert_ne!(a.seed, b.seed);
        assert!(refresh_script(&a.at(SystemTime::now())).is_ok());
        assert!(FreshInputs::for_vm("x;reboot").is_err());
        assert!(FreshInputs::for_vm("ABC").is_err());
    }

    /// The script parses under Debian's sh (dash), and its date format is one GNU date parses
    /// (checked with -d, which sets nothing). tests/clone_net.rs checks busybox the same way.
    #[test]
    fn script_parses_under_sh() {
        let seed = [7u8; 64];
        let s = refresh_script(&identity("clone-1", MID, &seed)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("identity.sh");
        std::fs::write(&file, &s).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bad = dir.path().join("bad.sh");
        std::fs::write(&bad, s.replace("ip neigh", "if ip neigh")).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "sh -n must catch a broken script");
        let out = std::process::Command::new("date")
            .args(["-u", "-d", "2026-11-18 11:06:40", "+%s"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1795000000");
    }
}
