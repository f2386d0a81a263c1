//! A database core's lease on its consumer name.
//!
//! Entries a consumer has read and not acknowledged are pending under its
//! name, and a core reads its own pending entries again when it starts:
//! two cores under one name would each take the other's in-flight batch
//! for a lost one. So a core holds a lease on its name in Redis (`SET NX
//! PX`, renewed by a script that checks the holder), and a second core
//! under the same name refuses to start, saying who holds it.
//!
//! A core that died leaves its lease to expire: a restart under its name
//! waits at most the lease's time, watching the lease run down; a lease
//! that is renewed meanwhile has a live holder, and the start is refused.
//! A core that cannot renew (Redis unreachable) past the lease's time
//! stops reading until it holds the lease again; one that finds another
//! holder stops with an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::redis::command::Command;
use crate::redis::driver::Client;
use crate::redis::resp::OwnedReply;

// The lease's scripts may run while Redis is at maxmemory (`allow-oom`):
// that is when the database core must go on draining, as its XACKs and
// trims are what free the memory, and a lease it could not renew would
// stop it.

/// Take the lease for `ARGV[1]` if nobody holds it; `OK` or nil.
const TAKE: &str = "#!lua flags=allow-oom\n\
                    return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])";

/// Renew the lease if `ARGV[1]` still holds it; 1 if renewed, 0 if not.
const RENEW: &str = "#!lua flags=allow-oom\n\
                     if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Delete the lease if `ARGV[1]` still holds it.
const RELEASE: &str = "#!lua flags=allow-oom\n\
                       if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end";

/// The lease on one consumer name, held by this process.
pub struct Lease {
    key: Vec<u8>,
    /// Who holds it: host, process id and start time, for the message a
    /// second core under the same name prints.
    holder: String,
    ttl: Duration,
    renewed_at: Instant,
    next_renewal: Instant,
}

/// The Redis key of `consumer`'s lease.
pub fn key(consumer: &str) -> Vec<u8> {
    format!("{{millrace:lease}}:{consumer}").into_bytes()
}

impl Lease {
    /// Take the lease on `consumer` for `ttl`, waiting for a dead holder's
    /// lease to run out; refuse if its holder renews it. `None` if `stop`
    /// came first.
    pub fn acquire(
        redis: &mut Client,
        consumer: &str,
        ttl: Duration,
        stop: &AtomicBool,
    ) -> Result<Option<Lease>, String> {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "unknown-host".to_string(), |h| h.trim().to_string());
        let mut lease = Lease {
            key: key(consumer),
            holder: format!("{host}:{}:{started}", std::process::id()),
            ttl,
            renewed_at: Instant::now(),
            next_renewal: Instant::now(),
        };
        let give_up = Instant::now() + ttl * 2 + Duration::from_secs(1);
        // The holder and time left last seen: a time left that grows, or
        // another holder, means a live core renews it.
        let mut seen: Option<(String, i64)> = None;
        let mut waiting_logged = false;
        loop {
            if lease.take(redis)? {
                lease.renewed_at = Instant::now();
                lease.next_renewal = lease.renewed_at + lease.renew_interval();
                return Ok(Some(lease));
            }
            let Some((holder, left_ms)) = lease.current(redis)? else {
                continue; // It ran out just now: take it.
            };
            if let Some((seen_holder, seen_left)) = &seen
                && (holder != *seen_holder || left_ms > *seen_left)
            {
                return Err(format!(
                    "the write-back consumer name {consumer:?} is held by {holder}, a live \
                     database core that renews its lease; give each database core its own \
                     consumer name (--consumer, writeback_consumer)"
                ));
            }
            if !waiting_logged {
                tracing::warn!(
                    consumer,
                    holder = %holder,
                    left_ms,
                    "the consumer name's lease is held; waiting for it to run out (a core that died leaves it)"
                );
                waiting_logged = true;
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "the write-back consumer name {consumer:?} is still held by {holder} \
                     after {} ms",
                    (ttl * 2).as_millis()
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            seen = Some((holder, left_ms));
            std::thread::sleep(
                (ttl / 20).clamp(Duration::from_millis(20), Duration::from_millis(250)),
            );
        }
    }

    /// Renew the lease when due. `Ok(true)` while it is held (renewed
    /// within its time), `Ok(false)` while renewals fail (Redis away) and
    /// it may have run out: read nothing until it is held again. An error
    /// when another core holds it now.
    pub fn keep(&mut self, redis: &mut Client) -> Result<bool, String> {
        let now = Instant::now();
        if now >= self.next_renewal {
            self.next_renewal = now + self.renew_interval();
            let ttl_ms = self.ttl.as_millis().to_string();
            let renew = Command::new(
                &[
                    b"EVAL",
                    RENEW.as_bytes(),
                    b"1",
                    &self.key,
                    self.holder.as_bytes(),
                    ttl_ms.as_bytes(),
                ],
                Some(3),
            );
            match redis.execute(vec![renew]).remove(0) {
                Ok(OwnedReply::Integer(1)) => self.renewed_at = now,
                Ok(OwnedReply::Integer(0)) => {
                    // Run out (or lost with a master's data): take it again
                    // if nobody else has.
                    match self.take(redis) {
                        Ok(true) => {
                            tracing::warn!(holder = %self.holder, "the consumer name's lease had run out; taken again");
                            self.renewed_at = now;
                        }
                        Ok(false) => {
                            if let Ok(Some((holder, _))) = self.current(redis) {
                                return Err(format!(
                                    "lost the lease on the write-back consumer name to {holder}: \
                                     another database core runs under this name"
                                ));
                            }
                            // Gone again meanwhile: the next renewal tries once more.
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "taking the consumer name's lease again failed; trying again")
                        }
                    }
                }
                other => {
                    tracing::warn!(reply = ?other, "renewing the consumer name's lease failed; trying again")
                }
            }
        }
        Ok(now < self.renewed_at + self.ttl)
    }

    /// Give the lease up, so that a restart need not wait for it.
    pub fn release(self, redis: &mut Client) {
        let release = Command::new(
            &[
                b"EVAL",
                RELEASE.as_bytes(),
                b"1",
                &self.key,
                self.holder.as_bytes(),
            ],
            Some(3),
        );
        if let Err(e) = redis.execute(vec![release]).remove(0) {
            tracing::debug!(error = %e, "releasing the consumer name's lease failed; it runs out");
        }
    }

    /// Who holds it, as the message of a second core names them.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How often it is renewed.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 5
    }

    /// `SET NX PX`: whether this process holds the lease now.
    fn take(&self, redis: &mut Client) -> Result<bool, String> {
        let ttl_ms = self.ttl.as_millis().to_string();
        let set = Command::new(
            &[
                b"EVAL",
                TAKE.as_bytes(),
                b"1",
                &self.key,
                self.holder.as_bytes(),
                ttl_ms.as_bytes(),
            ],
            Some(3),
        );
        match redis.execute(vec![set]).remove(0) {
            Ok(OwnedReply::Status(_)) => Ok(true),
            Ok(OwnedReply::Nil) => Ok(false),
            other => Err(format!("cannot take the consumer name's lease: {other:?}")),
        }
    }

    /// The holder and the time its lease has left, in milliseconds;
    /// `None` if nobody holds it.
    fn current(&self, redis: &mut Client) -> Result<Option<(String, i64)>, String> {
        let replies = redis.execute(vec![
            Command::new(&[&b"GET"[..], &self.key], Some(1)),
            Command::new(&[&b"PTTL"[..], &self.key], Some(1)),
        ]);
        let holder = match &replies[0] {
            Ok(OwnedReply::Bulk(holder)) => String::from_utf8_lossy(holder).into_owned(),
            Ok(OwnedReply::Nil) => return Ok(None),
            other => return Err(format!("cannot read the consumer name's lease: {other:?}")),
        };
        let left_ms = match &replies[1] {
            Ok(OwnedReply::Integer(ms)) => *ms,
            other => return Err(format!("cannot read the consumer name's lease: {other:?}")),
        };
        Ok(Some((holder, left_ms)))
    }
}
