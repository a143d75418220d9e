//! kinko-server: everything the `kinko` binary does, as a library so it is tested in-process.

pub mod barrier;
pub mod duration;
pub mod path;
pub mod policy;
pub mod secret;
pub mod shamir;
pub mod storage;
