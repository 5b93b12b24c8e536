//! IRC: names and the ngircd configuration fireclaw generates.

pub mod client;
pub mod command;
pub mod mask;
pub mod ngircd;
pub mod overseer;

pub use crate::values::{is_channel_name, is_nick};
