//! Per-VM disks. `thin`: the dm-thin engine (thin snapshot per VM); the reflink/copy engine and the
//! engine trait come from the VM lifecycle branch.

pub mod thin;
