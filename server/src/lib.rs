//! kinko-server: everything the `kinko` binary does, as a library so it is tested in-process.

pub mod barrier;
pub mod duration;
pub mod path;
pub mod policy;
pub mod secret;
pub mod shamir;
pub mod storage;
pub mod clock;
pub mod core;
pub mod encrypted;
pub mod error;
pub mod mounts;
pub mod policies;
pub mod seal;
pub mod tokens;
pub mod kv;
pub mod http;
pub mod config;
pub mod tls;
pub mod server;
