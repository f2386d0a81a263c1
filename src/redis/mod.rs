//! millrace's Redis Cluster client.
//!
//! - [`slot`]: hash slots (CRC16/XMODEM with hash tags).
//! - [`resp`]: commands encoded into output buffers, replies decoded in place.
//! - [`topology`]: which master owns which slots, from CLUSTER SHARDS or SLOTS.
pub mod cluster;
pub mod command;
pub mod driver;
pub mod links;
pub mod resp;
pub mod slot;
pub mod topology;
