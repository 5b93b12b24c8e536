//! The warm pool and the base snapshots it restores from.
//!
//! For each (image, engine, vCPUs, memory) the runtime keeps one base snapshot: booted once,
//! waited on until the guest answers, paused, snapshotted. [`tag`] says what a snapshot was made
//! on, so a restore on a host where any of it changed is refused with the part that differs;
//! [`store`] keeps the snapshots' rows.

pub mod clone;
pub mod snapshot;
pub mod store;
pub mod tag;
pub mod warm;
