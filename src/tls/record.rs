//! The record layer as the rings see it: ciphertext in, plaintext out, and
//! back. A connection's owner hands it the bytes a receive brought and the
//! bytes its protocol wrote; it never touches a socket, so the same session
//! serves the server's connections, the Redis links and the load generator.
//!
//! [`RecordLayer`] is the seam where kernel TLS would slot in on hosts that
//! have it (the handshake in user space, the records in the kernel); the
//! only implementation shipped is rustls in user space ([`Session`]),
//! because that is the one this project can test.

use std::io::{Read, Write};

use rustls::Connection;

/// Bytes of a TLS record header: type, version, length.
const RECORD_HEADER_BYTES: usize = 5;

/// Why a session ended.
#[derive(Debug)]
pub enum TlsError {
    /// The peer broke the protocol, failed verification or sent an alert;
    /// any alert of ours is queued and goes out with the next
    /// [`RecordLayer::seal`].
    Protocol(rustls::Error),
    /// The session's buffers refused the bytes (more than a record's worth
    /// arrived unread).
    Buffer(std::io::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::Buffer(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// One side of a TLS connection, without its socket.
pub trait RecordLayer {
    /// `wire`, as received, is taken in whole; the plaintext it carried is
    /// appended to `plain`. Handshake messages and alerts are answered
    /// through the next [`RecordLayer::seal`].
    fn open(&mut self, wire: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError>;

    /// Encrypt `plain` (emptied) and append everything there is to send,
    /// handshake messages and alerts included, to `wire`. Returns the
    /// records appended.
    fn seal(&mut self, plain: &mut Vec<u8>, wire: &mut Vec<u8>) -> usize;

    /// Something is waiting to go out even with no plaintext written (a
    /// handshake flight, a session ticket, an alert).
    fn wants_seal(&self) -> bool;

    /// The handshake has not finished: no plaintext can flow yet.
    fn is_handshaking(&self) -> bool;

    /// Queue a `close_notify` alert: nothing more will be sent.
    fn close(&mut self);

    /// The peer sent `close_notify`: nothing more will come.
    fn peer_closed(&self) -> bool;
}

/// A rustls session (client or server) as a [`RecordLayer`].
pub struct Session {
    conn: Connection,
    peer_closed: bool,
}

impl Session {
    /// Wrap `conn`. Its buffer of plaintext written before the handshake
    /// ends is left unlimited: its owner bounds what it writes (the
    /// pipeline depth, the load generator's requests in flight).
    pub fn new(mut conn: Connection) -> Self {
        conn.set_buffer_limit(None);
        Session {
            conn,
            peer_closed: false,
        }
    }

    /// The rustls connection, for what was negotiated.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl RecordLayer for Session {
    fn open(&mut self, mut wire: &[u8], plain: &mut Vec<u8>) -> Result<(), TlsError> {
        while !wire.is_empty() {
            match self.conn.read_tls(&mut wire) {
                // After close_notify nothing more is read.
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(TlsError::Buffer(e)),
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(TlsError::Protocol)?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                // The bytes are already decrypted and buffered: reading
                // exactly that many cannot block or fail.
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(TlsError::Buffer)?;
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
                return Ok(());
            }
        }
        Ok(())
    }

    fn seal(&mut self, plain: &mut Vec<u8>, wire: &mut Vec<u8>) -> usize {
        if !plain.is_empty() {
            // With no buffer limit, rustls takes all of it.
            let _ = self.conn.writer().write_all(plain);
            plain.clear();
        }
        let start = wire.len();
        while self.conn.wants_write() {
            // Writing into a Vec does not fail.
            if self.conn.write_tls(wire).is_err() {
                break;
            }
        }
        count_records(&wire[start..])
    }

    fn wants_seal(&self) -> bool {
        self.conn.wants_write()
    }

    fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed
    }
}

/// Whole records in `wire`, which starts at a record boundary: a walk of
/// the headers, one step per record.
fn count_records(wire: &[u8]) -> usize {
    let mut at = 0;
    let mut records = 0;
    while let Some(header) = wire.get(at..at + RECORD_HEADER_BYTES) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        at += RECORD_HEADER_BYTES + len;
        records += 1;
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_counted_by_their_headers() {
        assert_eq!(count_records(&[]), 0);
        let mut wire = vec![23, 3, 3, 0, 2, 9, 9];
        assert_eq!(count_records(&wire), 1);
        wire.extend_from_slice(&[21, 3, 3, 0, 0]);
        assert_eq!(count_records(&wire), 2);
    }
}
