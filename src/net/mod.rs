//! Host networking: links and addresses over rtnetlink, fireclaw's nftables table, sysctls.

pub mod host;
pub mod lease;
pub mod link;
pub mod netlink;
pub mod nft;
pub mod policy;
pub mod slot;
pub mod sysctl;
pub mod tap;

pub use crate::values::{validate_ifname, Ipv4Cidr};
