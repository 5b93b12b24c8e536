//! Fixtures the tests of every workspace member share (a dev-dependency only): real daemons
//! started the way their distribution's unit starts them, and doubles of services that cannot be
//! installed here, speaking the same documented protocol.

pub mod irc;
pub mod netns;
pub mod ngircd;
pub mod ollama;
pub mod unit;
