//! millrace's Redis Cluster client.
//!
//! - [`slot`]: hash slots (CRC16/XMODEM with hash tags).
//! - [`resp`]: commands encoded into output buffers, replies decoded in place.
pub mod resp;
pub mod slot;
