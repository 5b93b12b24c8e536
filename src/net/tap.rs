//! One tap device per VM, attached to the bridge. The tap is created persistent through
//! /dev/net/tun (taps have no rtnetlink "create"), then enslaved and brought up over rtnetlink, so
//! it exists before the VMM starts (Firecracker requires that) and outlives a VMM crash until
//! fireclaw deletes it.

use std::os::unix::io::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use super::validate_ifname;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name: {0}")]
    Name(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded, and are we root?): {0}")]
    OpenTun(std::io::Error),
    #[error("cannot create tap {name}: {source}")]
    Create {
        name: String,
        source: nix::errno::Errno,
    },
    #[error("bridge {0} does not exist; run `fireclaw provision` (or create it) first")]
    NoBridge(String),
    #[error("netlink: {0}")]
    Netlink(String),
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

fn run<T>(f: impl AsyncFnOnce(Handle) -> Result<T, TapError>) -> Result<T, TapError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TapError::Netlink(format!("starting netlink runtime: {e}")))?;
    rt.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| TapError::Netlink(format!("opening a netlink socket: {e}")))?;
        let task = tokio::spawn(connection);
        let result = f(handle).await;
        task.abort();
        result
    })
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, TapError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(TapError::Netlink(format!("looking up {name}: {e}"))),
    }
}

/// Creates tap `name`, attaches it to `bridge` and brings it up. If anything after creation
/// fails, the tap is deleted again.
pub fn create(name: &str, bridge: &str) -> Result<(), TapError> {
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
    // SAFETY: `req` is a properly laid out struct ifreq and the fd is an open tun control device.
    unsafe { tunsetiff(tun.as_raw_fd(), &req) }.map_err(|source| TapError::Create {
        name: name.into(),
        source,
    })?;
    // SAFETY: as above; TUNSETPERSIST takes an int by value.
    unsafe { tunsetpersist(tun.as_raw_fd(), 1) }.map_err(|source| TapError::Create {
        name: name.into(),
        source,
    })?;
    drop(tun);
    let (n, b) = (name.to_string(), bridge.to_string());
    let attached = run(async move |h| {
        let bridge = find(&h, &b)
            .await?
            .ok_or_else(|| TapError::NoBridge(b.clone()))?;
        let tap = find(&h, &n)
            .await?
            .ok_or_else(|| TapError::Netlink(format!("tap {n} vanished after creation")))?;
        let msg = LinkUnspec::new_with_index(tap.header.index)
            .controller(bridge.header.index)
            .up()
            .build();
        h.link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| TapError::Netlink(format!("attaching {n} to {b}: {e}")))
    });
    if let Err(e) = attached {
        let _ = delete(name);
        return Err(e);
    }
    Ok(())
}

/// Deletes tap `name`; one that is already gone is not an error.
pub fn delete(name: &str) -> Result<(), TapError> {
    validate_ifname(name).map_err(TapError::Name)?;
    let n = name.to_string();
    run(async move |h| match find(&h, &n).await? {
        None => Ok(()),
        Some(l) => match h.link().del(l.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(()),
            Err(e) => Err(TapError::Netlink(format!("deleting {n}: {e}"))),
        },
    })
}

/// Every link whose name starts with [`TAP_PREFIX`] (for `gc` and leak checks).
pub fn list_fireclaw_taps() -> Result<Vec<String>, TapError> {
    run(async move |h| {
        let mut links = h.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| TapError::Netlink(format!("listing links: {e}")))?
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
    })
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
}
