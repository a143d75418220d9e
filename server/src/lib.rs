//! kinko-server: everything the `kinko` binary does, as a library so it is tested in-process.

pub mod aws;
pub mod barrier;
pub mod cache;
pub mod clock;
pub mod config;
pub mod core;
pub mod dev_ca;
pub mod duration;
pub mod encrypted;
pub mod error;
pub mod http;
pub mod kubernetes;
pub mod kv;
pub mod metrics;
pub mod mounts;
pub mod path;
pub mod policies;
pub mod policy;
pub mod retry;
pub mod seal;
pub mod sealed;
pub mod secret;
pub mod server;
pub mod shamir;
pub mod storage;
pub mod tokens;
