//! One tap device per VM, attached to the bridge. The tap is created persistent through
//! /dev/net/tun (taps have no rtnetlink "create"), then enslaved and brought up over rtnetlink, so
//! it exists before the VMM starts (Firecracker requires that) and outlives a VMM crash until
//! fireclaw deletes it.

use std::os::unix::io::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::netlink::{errno_of, Netlink, NetlinkError};
use super::validate_ifname;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name: {0}")]
    Name(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded, and are we root?): {0}")]
    OpenTun(#[source] std::io::Error),
    /// Another VM (or a leftover of one) holds the name: retry with another name or run `gc`.
    #[error("tap {name} already exists (another VM holds it, or `fireclaw gc` has not removed a leftover)")]
    Exists { name: String },
    #[error("cannot create tap {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("bridge {0} does not exist; run `fireclaw provision` (or create it) first")]
    NoBridge(String),
    #[error("tap {name} vanished right after it was created (removed by another program?)")]
    Vanished { name: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The tap name for a VM id: `fc-` + the id, within the kernel's 15-byte limit.
pub fn tap_name(vm_id: &str) -> String {
    let short: String = vm_id.chars().take(12).collect();
    format!("fc-{short}")
}

/// Prefix of every tap fireclaw creates (leak checks and `gc` look for it).
pub const TAP_PREFIX: &str = "fc-";

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
/// Fail if the device exists instead of attaching to it: two VMs must never share a tap.
const IFF_TUN_EXCL: i16 = 0x8000u16 as i16;

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
    IfReq
);
nix::ioctl_write_int_bad!(
    tunsetpersist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<nix::libc::c_int>())
);

/// A private connection for the synchronous façade (tests, tools): closed when the call ends.
fn blocking<T>(f: impl AsyncFnOnce(&Netlink) -> Result<T, TapError>) -> Result<T, TapError> {
    let nl = Netlink::open()?;
    nl.block_on(f(&nl))
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, TapError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetlinkError::request(format!("looking up {name}"))(e).into()),
    }
}

const ENODEV: i32 = nix::libc::ENODEV;

/// Creates tap `name`, attaches it to `bridge` and brings it up, in the namespace `nl` was
/// opened in (the tun device is made by the calling thread, which must be in that namespace).
/// If anything after creation fails, the tap is deleted again.
pub async fn create_in(nl: &Netlink, name: &str, bridge: &str) -> Result<(), TapError> {
    make_persistent_tap(name)?;
    let h = nl.handle();
    let attached = async {
        let b = find(h, bridge)
            .await?
            .ok_or_else(|| TapError::NoBridge(bridge.to_string()))?;
        let tap = find(h, name).await?.ok_or_else(|| TapError::Vanished {
            name: name.to_string(),
        })?;
        let msg = LinkUnspec::new_with_index(tap.header.index)
            .controller(b.header.index)
            .up()
            .build();
        h.link()
            .set(msg)
            .execute()
            .await
            .map_err(NetlinkError::request(format!(
                "attaching {name} to {bridge}"
            )))?;
        Ok::<_, TapError>(())
    }
    .await;
    if let Err(e) = attached {
        if let Err(cleanup) = delete_in(nl, name).await {
            tracing::warn!("removing half-made tap {name}: {cleanup}");
        }
        return Err(e);
    }
    Ok(())
}

fn make_persistent_tap(name: &str) -> Result<(), TapError> {
    validate_ifname(name).map_err(TapError::Name)?;
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let create_err = |source| make_err(name, source);
    // SAFETY: `req` is a properly laid out struct ifreq and the fd is an open tun control device.
    unsafe { tunsetiff(tun.as_raw_fd(), &req) }.map_err(create_err)?;
    // SAFETY: as above; TUNSETPERSIST takes an int by value.
    unsafe { tunsetpersist(tun.as_raw_fd(), 1) }.map_err(create_err)?;
    Ok(())
}

fn make_err(name: &str, source: nix::errno::Errno) -> TapError {
    match source {
        // IFF_TUN_EXCL: the kernel's answer when the name is taken.
        nix::errno::Errno::EBUSY | nix::errno::Errno::EEXIST => {
            TapError::Exists { name: name.into() }
        }
        source => TapError::Create {
            name: name.into(),
            source,
        },
    }
}

/// Deletes tap `name` in `nl`'s namespace; one that is already gone is not an error.
pub async fn delete_in(nl: &Netlink, name: &str) -> Result<(), TapError> {
    validate_ifname(name).map_err(TapError::Name)?;
    let h = nl.handle();
    match find(h, name).await? {
        None => Ok(()),
        Some(l) => match h.link().del(l.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(NetlinkError::request(format!("deleting {name}"))(e).into()),
        },
    }
}

/// Every link in `nl`'s namespace whose name starts with [`TAP_PREFIX`].
pub async fn list_in(nl: &Netlink) -> Result<Vec<String>, TapError> {
    let mut links = nl.handle().link().get().execute();
    let mut out = Vec::new();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(NetlinkError::request("listing links"))?
    {
        for attr in &link.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = attr {
                if n.starts_with(TAP_PREFIX) {
                    out.push(n.clone());
                }
            }
        }
    }
    Ok(out)
}

/// [`create_in`] for synchronous callers, in the calling thread's namespace.
pub fn create(name: &str, bridge: &str) -> Result<(), TapError> {
    validate_ifname(name).map_err(TapError::Name)?;
    blocking(async |nl| create_in(nl, name, bridge).await)
}

/// [`delete_in`] for synchronous callers, in the calling thread's namespace.
pub fn delete(name: &str) -> Result<(), TapError> {
    validate_ifname(name).map_err(TapError::Name)?;
    blocking(async |nl| delete_in(nl, name).await)
}

/// [`list_in`] for synchronous callers (for `gc` and leak checks).
pub fn list_fireclaw_taps() -> Result<Vec<String>, TapError> {
    blocking(async |nl| list_in(nl).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_the_kernel_limit() {
        let t = tap_name("0123456789abcdef");
        assert_eq!(t, "fc-0123456789ab");
        assert!(validate_ifname(&t).is_ok());
        assert!(create("bad/name", "br").is_err());
        assert!(create("waytoolongname_x", "br").is_err());
    }

    #[test]
    fn taken_names_are_their_own_error() {
        // What the kernel answers TUNSETIFF with IFF_TUN_EXCL on a name that exists.
        let e = match make_err("fc-x", nix::errno::Errno::EBUSY) {
            TapError::Exists { name } => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(e, "fc-x");
        assert!(matches!(
            make_err("fc-x", nix::errno::Errno::EPERM),
            TapError::Create { .. }
        ));
    }
}
