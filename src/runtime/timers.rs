//! Connection timeouts as deadline lists. Every timeout of one kind has the
//! same length, so a list kept in arming order is also in deadline order:
//! arming, disarming and expiring are O(1), and memory is two entries per
//! connection. (The technique libev recommends for constant timeouts.)

use std::time::{Duration, Instant};

/// Which timeout a connection is waiting on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// A request head must be complete within `header_timeout_ms` of its
    /// start (of the connection's start, for the first request).
    Header = 0,
    /// A connection with no progress for `idle_timeout_ms` is closed: between
    /// requests, while a body arrives, while a response waits to be sent.
    Idle = 1,
    /// A closing connection reads (and discards) for `close_linger_ms` so
    /// that its final response is not lost to a reset.
    Linger = 2,
    /// A TLS handshake must finish within `tls_handshake_timeout_ms` of the
    /// connection's start.
    Handshake = 3,
}

/// Timeout kinds.
const KINDS: usize = 4;

impl TimerKind {
    /// Whether progress moves the deadline. Header and linger deadlines count
    /// from when they started, however the peer trickles bytes.
    fn restarts_on_progress(self) -> bool {
        self == TimerKind::Idle
    }
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Entry {
    kind: Option<TimerKind>,
    prev: u32,
    next: u32,
    deadline: Instant,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

/// Deadlines for every connection slot of one executor.
pub struct Timers {
    durations: [Duration; KINDS],
    lists: [List; KINDS],
    entries: Vec<Entry>,
}

impl Timers {
    /// Lists for the timeouts, each with its fixed duration.
    pub fn new(header: Duration, idle: Duration, linger: Duration, handshake: Duration) -> Self {
        Timers {
            durations: [header, idle, linger, handshake],
            lists: [List {
                head: NIL,
                tail: NIL,
            }; KINDS],
            entries: Vec::new(),
        }
    }

    /// Wait on `kind` from `now`. Re-arming the kind a slot already waits on
    /// moves its deadline only if that kind restarts on progress.
    pub fn arm(&mut self, slot: u32, kind: TimerKind, now: Instant) {
        let index = slot as usize;
        if index >= self.entries.len() {
            self.entries.resize(
                index + 1,
                Entry {
                    kind: None,
                    prev: NIL,
                    next: NIL,
                    deadline: now,
                },
            );
        }
        if self.entries[index].kind == Some(kind) && !kind.restarts_on_progress() {
            return;
        }
        self.disarm(slot);
        let list = &mut self.lists[kind as usize];
        let link = &mut self.entries[index];
        link.kind = Some(kind);
        link.deadline = now + self.durations[kind as usize];
        link.prev = list.tail;
        link.next = NIL;
        if list.tail == NIL {
            list.head = slot;
        } else {
            self.entries[list.tail as usize].next = slot;
        }
        list.tail = slot;
    }

    /// Stop waiting.
    pub fn disarm(&mut self, slot: u32) {
        let Some(link) = self.entries.get(slot as usize).copied() else {
            return;
        };
        let Some(kind) = link.kind else {
            return;
        };
        let list = &mut self.lists[kind as usize];
        if link.prev == NIL {
            list.head = link.next;
        } else {
            self.entries[link.prev as usize].next = link.next;
        }
        if link.next == NIL {
            list.tail = link.prev;
        } else {
            self.entries[link.next as usize].prev = link.prev;
        }
        self.entries[slot as usize].kind = None;
    }

    /// The timeout `slot` waits on, if any.
    #[cfg(test)]
    pub fn armed(&self, slot: u32) -> Option<TimerKind> {
        self.entries.get(slot as usize).and_then(|l| l.kind)
    }

    /// The next slot whose deadline is at or before `now`, disarmed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(u32, TimerKind)> {
        let (slot, kind) = self
            .lists
            .iter()
            .filter(|list| list.head != NIL)
            .map(|list| &self.entries[list.head as usize])
            .filter(|link| link.deadline <= now)
            .min_by_key(|link| link.deadline)
            .and_then(|link| {
                let kind = link.kind?;
                Some((self.lists[kind as usize].head, kind))
            })?;
        self.disarm(slot);
        Some((slot, kind))
    }

    /// The earliest deadline of all.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.lists
            .iter()
            .filter(|list| list.head != NIL)
            .map(|list| self.entries[list.head as usize].deadline)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timers() -> Timers {
        Timers::new(10 * MS, 100 * MS, 5 * MS, 20 * MS)
    }

    fn drain(timers: &mut Timers, now: Instant) -> Vec<(u32, TimerKind)> {
        std::iter::from_fn(|| timers.pop_expired(now)).collect()
    }

    #[test]
    fn expire_in_deadline_order_across_kinds() {
        let t0 = Instant::now();
        let mut timers = timers();
        timers.arm(1, TimerKind::Idle, t0);
        timers.arm(2, TimerKind::Header, t0);
        timers.arm(3, TimerKind::Linger, t0 + MS);
        timers.arm(4, TimerKind::Header, t0 + 2 * MS);
        timers.arm(5, TimerKind::Handshake, t0);
        assert_eq!(timers.next_deadline(), Some(t0 + 6 * MS));
        assert_eq!(drain(&mut timers, t0 + 5 * MS), []);
        assert_eq!(
            drain(&mut timers, t0 + 12 * MS),
            [
                (3, TimerKind::Linger),
                (2, TimerKind::Header),
                (4, TimerKind::Header)
            ]
        );
        assert_eq!(
            drain(&mut timers, t0 + 20 * MS),
            [(5, TimerKind::Handshake)]
        );
        assert_eq!(drain(&mut timers, t0 + 100 * MS), [(1, TimerKind::Idle)]);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn idle_restarts_on_progress_header_does_not() {
        let t0 = Instant::now();
        let mut timers = timers();
        timers.arm(1, TimerKind::Header, t0);
        timers.arm(1, TimerKind::Header, t0 + 8 * MS);
        timers.arm(2, TimerKind::Idle, t0);
        timers.arm(2, TimerKind::Idle, t0 + 50 * MS);
        assert_eq!(drain(&mut timers, t0 + 10 * MS), [(1, TimerKind::Header)]);
        assert_eq!(drain(&mut timers, t0 + 100 * MS), []);
        assert_eq!(drain(&mut timers, t0 + 150 * MS), [(2, TimerKind::Idle)]);
    }

    #[test]
    fn changing_kind_and_disarming_unlink() {
        let t0 = Instant::now();
        let mut timers = timers();
        for slot in 0..5 {
            timers.arm(slot, TimerKind::Header, t0);
        }
        timers.disarm(0);
        timers.disarm(2);
        timers.disarm(4);
        timers.arm(3, TimerKind::Idle, t0);
        assert_eq!(timers.armed(3), Some(TimerKind::Idle));
        assert_eq!(timers.armed(2), None);
        assert_eq!(drain(&mut timers, t0 + 10 * MS), [(1, TimerKind::Header)]);
        assert_eq!(drain(&mut timers, t0 + 100 * MS), [(3, TimerKind::Idle)]);
        timers.disarm(3);
        timers.disarm(77);
    }
}
