//! Write-back: the queue of accepted writes in Redis Streams, and the
//! database core that drains it into PostgreSQL.
//!
//! - [`table`]: write-back tables: the rows a record becomes, the merge
//!   that makes writing it twice the same as once, the SQL.
//! - [`queue`]: partitions, records, how they are appended and read back.
//! - [`db`]: one batch, one transaction: binary COPY into staging tables,
//!   then an idempotent merge.
//! - [`drain`]: the database core's loop: gather, write, acknowledge;
//!   redelivery and take-over.
//!
//! - [`lease`]: a database core's lease on its consumer name.
//! - [`lookup`]: read-through of the executors' cache misses.
//!
//! `millrace writeback` ([`crate::server::writeback`]) runs the database
//! core on its own; `millrace serve` runs it on a core of its own beside
//! the executors when given `--postgres-url`.

pub mod db;
pub mod drain;
pub mod lease;
pub mod lookup;
pub mod queue;
pub mod table;

use crate::redis::driver::Client;
use crate::redis::resp::OwnedReply;

use self::queue::Queue;

/// Record the queue's partition count in the cluster, or check it against
/// the one recorded: a server or database core with another count refuses
/// to start.
pub fn check_queue_layout(client: &mut Client, queue: &Queue) -> Result<(), String> {
    match client.call(queue.record_layout()) {
        Ok(OwnedReply::Bulk(recorded)) => queue.check_layout(&recorded),
        other => Err(format!(
            "cannot read the write-back queue's layout from Redis: {other:?}"
        )),
    }
}
