//! A client connection as the executor holds it: its socket on the ring,
//! its HTTP state, the responses written and not yet sent. Connections live
//! in a slab indexed by the slot number their tokens carry.

use std::net::SocketAddr;
use std::time::Instant;

use crate::http::HttpConnection;
use crate::metrics::TlsFigures;
use crate::ring::Ring;
use crate::ring::socket::{RingSocket, Sending};
use crate::ring::token::Token;
use crate::tls::{RecordLayer, Session};

/// Output buffers that grew past this are freed once sent, so one large
/// response does not pin memory for the life of a connection.
pub const RETAINED_BUFFER_BYTES: usize = 64 * 1024;

/// Where a connection is on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Serving requests.
    Open,
    /// Its final response is sent and its write side shut: reading (and
    /// discarding) until the peer closes or `close_linger_ms` passes, so the
    /// peer reads that response rather than a reset.
    Lingering,
    /// Waiting for its operations to finish, then closed.
    Closing,
}

/// One client connection.
pub struct Connection {
    /// Its socket: a direct descriptor (no file descriptor), with the send
    /// in flight and what its operations need.
    pub socket: RingSocket,
    pub http: HttpConnection,
    /// Responses written since the last send started.
    pub out: Vec<u8>,
    /// Responses in `out`.
    pub out_responses: usize,
    /// When the first request answered in `out` arrived.
    pub out_since: Option<Instant>,
    /// Responses in the batch the socket is sending.
    pub sending_responses: usize,
    /// When the first request answered in that batch arrived.
    pub sending_since: Option<Instant>,
    /// The peer closed its side.
    pub read_closed: bool,
    /// No request answered yet: the header timeout runs from the connect.
    pub fresh: bool,
    pub life: Life,
    /// Queued to be settled at the end of this turn.
    pub touched: bool,
    /// When it was accepted, for `max_connection_age_ms`.
    pub accepted_at: Instant,
    /// The PROXY protocol header read so far, while one is awaited.
    pub proxy_header: Option<Vec<u8>>,
    /// The client, as a PROXY header named it.
    pub client: Option<SocketAddr>,
    /// Its TLS session, on the HTTPS listener.
    pub tls: Option<Box<TlsConn>>,
}

/// A TLS connection's record layer and the records waiting to go out.
/// Responses are written in plaintext to [`Connection::out`] and sealed
/// into `wire` when the connection is settled, so one turn's responses
/// go out as few records in one send.
pub struct TlsConn {
    /// The session.
    pub session: Session,
    /// Sealed records not yet handed to the socket.
    pub wire: Vec<u8>,
    /// Records in `wire`.
    pub wire_records: usize,
    /// Records in the batch the socket is sending.
    pub sending_records: usize,
    /// The handshake finished (and was counted).
    pub established: bool,
    /// Our `close_notify` is queued.
    pub close_sent: bool,
    /// A TLS error ended the session: its alert goes out, then the
    /// connection closes.
    pub failed: bool,
}

impl TlsConn {
    /// A session not yet shaken hands.
    pub fn new(session: Session) -> Self {
        TlsConn {
            session,
            wire: Vec::new(),
            wire_records: 0,
            sending_records: 0,
            established: false,
            close_sent: false,
            failed: false,
        }
    }

    /// Records sealed and not yet sent.
    pub fn unsent_records(&self) -> usize {
        self.wire_records + self.sending_records
    }

    /// Take in the records a receive brought: their plaintext replaces
    /// `plain`'s contents; a TLS error marks the session failed (its alert
    /// goes out with the next send). Handshakes and errors are counted in
    /// `figures`.
    pub fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>, figures: &mut TlsFigures) -> Opened {
        plain.clear();
        if let Err(e) = self.session.open(wire, plain) {
            tracing::debug!(error = %e, "TLS error");
            figures.errors += 1;
            self.failed = true;
        }
        let established = !self.established && !self.failed && !self.session.is_handshaking();
        if established {
            self.established = true;
            match self.session.connection().handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => figures.resumed_handshakes += 1,
                _ => figures.full_handshakes += 1,
            }
        }
        Opened {
            established,
            peer_closed: self.session.peer_closed(),
        }
    }
}

/// What [`TlsConn::open`] found.
pub struct Opened {
    /// The handshake finished with these records.
    pub established: bool,
    /// The peer sent `close_notify`: nothing more will come.
    pub peer_closed: bool,
}

/// Most plaintext one TLS record carries.
const RECORD_PLAINTEXT_BYTES: usize = 16 * 1024;

impl Connection {
    /// A connection just accepted at `now`.
    pub fn new(socket: RingSocket, http: HttpConnection, now: Instant) -> Self {
        Connection {
            socket,
            http,
            out: Vec::new(),
            out_responses: 0,
            out_since: None,
            sending_responses: 0,
            sending_since: None,
            read_closed: false,
            fresh: true,
            life: Life::Open,
            touched: false,
            accepted_at: now,
            proxy_header: None,
            client: None,
            tls: None,
        }
    }

    /// Nothing written is waiting to be sent.
    pub fn output_drained(&self) -> bool {
        !self.socket.is_sending()
            && self.out.is_empty()
            && self
                .tls
                .as_ref()
                .is_none_or(|tls| tls.wire.is_empty() && !tls.session.wants_seal())
    }

    /// How many bytes its output buffer may hold before it answers (and
    /// reads) no more: a TLS connection's room for records under
    /// `max_unsent_records`, less those sealed and not yet sent; no bound
    /// in the clear.
    pub fn max_out_bytes(&self, max_unsent_records: usize) -> usize {
        match &self.tls {
            None => usize::MAX,
            Some(tls) => max_unsent_records
                .saturating_sub(tls.unsent_records())
                .saturating_mul(RECORD_PLAINTEXT_BYTES),
        }
    }

    /// Its final words are written: an HTTP response that closes it, or a
    /// TLS alert.
    pub fn is_closing(&self) -> bool {
        self.http.is_closing() || self.tls.as_ref().is_some_and(|tls| tls.failed)
    }

    /// Send what was written (sealed into TLS records first, if it speaks
    /// TLS), unless a send is out.
    pub fn flush(&mut self, ring: &mut Ring, token: Token) {
        let out = match &mut self.tls {
            None => &mut self.out,
            Some(tls) => {
                tls.wire_records += tls.session.seal(&mut self.out, &mut tls.wire);
                &mut tls.wire
            }
        };
        if self.socket.send(ring, out, token) == Sending::Batch {
            self.batch_started();
        }
    }

    /// Responses written and not yet sent.
    pub fn unsent_responses(&self) -> usize {
        self.out_responses + self.sending_responses
    }

    /// `count` responses were appended to `out` for requests that arrived at `now`.
    pub fn wrote(&mut self, count: usize, now: Instant) {
        if count > 0 {
            self.out_responses += count;
            self.out_since.get_or_insert(now);
            self.fresh = false;
        }
    }

    /// The socket took `out` as its new batch.
    fn batch_started(&mut self) {
        self.sending_responses = std::mem::take(&mut self.out_responses);
        self.sending_since = self.out_since.take();
        if let Some(tls) = &mut self.tls {
            tls.sending_records = std::mem::take(&mut tls.wire_records);
        }
    }

    /// The batch went out whole: returns its response count and when its
    /// first request arrived, and frees an oversized send buffer.
    pub fn finish_batch(&mut self) -> (usize, Option<Instant>) {
        self.socket.trim_send_buffer(RETAINED_BUFFER_BYTES);
        if let Some(tls) = &mut self.tls {
            tls.sending_records = 0;
        }
        (
            std::mem::take(&mut self.sending_responses),
            self.sending_since.take(),
        )
    }
}

struct Slot {
    generation: u16,
    conn: Option<Connection>,
}

/// Connections by slot number; freed slots are reused with a new generation.
#[derive(Default)]
pub struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// Connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Store `conn`; returns its slot and generation.
    pub fn insert(&mut self, conn: Connection) -> (u32, u16) {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            let entry = &mut self.slots[slot as usize];
            entry.conn = Some(conn);
            return (slot, entry.generation);
        }
        let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
        self.slots.push(Slot {
            generation: 0,
            conn: Some(conn),
        });
        (slot, 0)
    }

    /// The connection in `slot`, if it is still the one `generation` names.
    pub fn get_mut(&mut self, slot: u32, generation: u16) -> Option<&mut Connection> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.generation != generation {
            return None;
        }
        entry.conn.as_mut()
    }

    /// The connection in `slot`, whatever its generation.
    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut Connection> {
        self.slots.get_mut(slot as usize)?.conn.as_mut()
    }

    /// The generation of `slot`'s current occupant, for the tokens of its operations.
    pub fn generation(&self, slot: u32) -> u16 {
        self.slots.get(slot as usize).map_or(0, |s| s.generation)
    }

    /// Take the connection out of `slot`; the slot's next occupant gets a new generation.
    pub fn remove(&mut self, slot: u32) -> Option<Connection> {
        let entry = self.slots.get_mut(slot as usize)?;
        let conn = entry.conn.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.len -= 1;
        Some(conn)
    }

    /// Slots that hold a connection.
    pub fn occupied(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(i, _)| i as u32)
    }
}
