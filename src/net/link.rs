//! Links and addresses over rtnetlink. The `*_async` functions take a handle from a
//! [`Netlink`]; the synchronous ones (what provisioning calls) open a private connection per
//! call: provisioning makes a handful of calls, and this keeps its callers synchronous.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::netlink::Netlink;
use super::Ipv4Cidr;

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkState {
    pub index: u32,
    pub kind: Option<String>,
    pub up: bool,
    pub ipv4: Vec<Ipv4Cidr>,
}

/// The synchronous façade provisioning uses: a private connection in the calling thread's
/// namespace, driven by its own thread, so this is safe to call from inside a tokio runtime too.
fn run<T>(f: impl AsyncFnOnce(Handle) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let nl = Netlink::open()?;
    nl.block_on(f(nl.handle().clone()))
}

async fn find(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers ENODEV for a name that does not exist.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

const fn libc_enodev() -> i32 {
    19
}

async fn index_of(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    find(handle, name)
        .await?
        .map(|l| l.header.index)
        .with_context(|| format!("link {name} does not exist"))
}

pub async fn state_async(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkState>> {
    let Some(link) = find(handle, name).await? else {
        return Ok(None);
    };
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(match k {
                InfoKind::Bridge => "bridge".to_string(),
                InfoKind::Tun => "tun".to_string(),
                InfoKind::Veth => "veth".to_string(),
                other => format!("{other:?}").to_lowercase(),
            }),
            _ => None,
        }),
        _ => None,
    });
    let index = link.header.index;
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut ipv4 = Vec::new();
    while let Some(msg) = addresses.try_next().await.context("listing addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(addr)) = attr {
                ipv4.push(Ipv4Cidr {
                    addr: *addr,
                    prefix: msg.header.prefix_len,
                });
            }
        }
    }
    ipv4.dedup();
    Ok(Some(LinkState {
        index,
        kind,
        up: link.header.flags.contains(LinkFlags::Up),
        ipv4,
    }))
}

/// [`state_async`] for synchronous callers.
pub fn state(name: &str) -> anyhow::Result<Option<LinkState>> {
    run(async |h| state_async(&h, name).await)
}

/// Creates bridge `name`, down: bringing it up is its own journaled action.
pub async fn create_bridge_async(h: &Handle, name: &str) -> anyhow::Result<()> {
    let msg = rtnetlink::LinkMessageBuilder::<LinkBridge>::new(name).build();
    h.link()
        .add(msg)
        .execute()
        .await
        .with_context(|| format!("creating bridge {name}"))
}

/// [`create_bridge_async`] for synchronous callers.
pub fn create_bridge(name: &str) -> anyhow::Result<()> {
    run(async |h| create_bridge_async(&h, name).await)
}

/// Adds `cidr` to `link`; an address that is already there is not an error.
pub async fn add_address_async(h: &Handle, link: &str, cidr: &Ipv4Cidr) -> anyhow::Result<()> {
    let index = index_of(h, link).await?;
    match h
        .address()
        .add(index, IpAddr::V4(cidr.addr), cidr.prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        // EEXIST: already there (a re-run after an interruption).
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -17 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("adding {cidr} to {link}")),
    }
}

/// [`add_address_async`] for synchronous callers; `cidr` as text (`172.16.0.1/24`).
pub fn add_address(link: &str, cidr: &str) -> anyhow::Result<()> {
    let cidr = Ipv4Cidr::parse(cidr).map_err(anyhow::Error::msg)?;
    run(async |h| add_address_async(&h, link, &cidr).await)
}

/// Removes `cidr` from `link`; a link or address that is already gone is not an error.
pub async fn delete_address_async(h: &Handle, link: &str, cidr: &Ipv4Cidr) -> anyhow::Result<()> {
    let Some(l) = find(h, link).await? else {
        return Ok(());
    };
    let mut addresses = h
        .address()
        .get()
        .set_link_index_filter(l.header.index)
        .execute();
    while let Some(msg) = addresses.try_next().await? {
        let matches = msg.header.prefix_len == cidr.prefix
            && msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(x)) if *x == cidr.addr));
        if matches {
            h.address().del(msg).execute().await?;
        }
    }
    Ok(())
}

/// [`delete_address_async`] for synchronous callers.
pub fn delete_address(link: &str, cidr: &str) -> anyhow::Result<()> {
    let cidr = Ipv4Cidr::parse(cidr).map_err(anyhow::Error::msg)?;
    run(async |h| delete_address_async(&h, link, &cidr).await)
}

/// Sets `link` up or down. Bringing down a link that is gone is done; bringing up one that is
/// gone is an error.
pub async fn set_up_async(h: &Handle, link: &str, up: bool) -> anyhow::Result<()> {
    let Some(l) = find(h, link).await? else {
        return if up {
            anyhow::bail!("link {link} does not exist")
        } else {
            Ok(())
        };
    };
    let builder = LinkUnspec::new_with_index(l.header.index);
    let msg = if up { builder.up() } else { builder.down() }.build();
    h.link()
        .set(msg)
        .execute()
        .await
        .with_context(|| format!("setting {link} {}", if up { "up" } else { "down" }))
}

/// [`set_up_async`] for synchronous callers.
pub fn set_up(link: &str, up: bool) -> anyhow::Result<()> {
    run(async |h| set_up_async(&h, link, up).await)
}

/// Deletes a link; a link that is already gone is not an error (undo is idempotent).
pub async fn delete_async(h: &Handle, name: &str) -> anyhow::Result<()> {
    match find(h, name).await? {
        None => Ok(()),
        Some(l) => h
            .link()
            .del(l.header.index)
            .execute()
            .await
            .with_context(|| format!("deleting link {name}")),
    }
}

/// [`delete_async`] for synchronous callers.
pub fn delete(name: &str) -> anyhow::Result<()> {
    run(async |h| delete_async(&h, name).await)
}

/// The first address of `cidr`'s subnet after the host's own, for tests and leases.
pub fn nth_host(cidr: &Ipv4Cidr, n: u32) -> Option<Ipv4Addr> {
    let ip = u32::from(cidr.network()).checked_add(n)?;
    let ip = Ipv4Addr::from(ip);
    (cidr.contains(ip) && ip != cidr.broadcast()).then_some(ip)
}
