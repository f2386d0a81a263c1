//! The 64-bit `user_data` every submission carries: who the operation
//! belongs to (a subsystem on the ring, and that subsystem's own code for
//! the operation) and which of its slots (a connection), with the slot's
//! generation, which tells a completion for a reused slot from one for its
//! previous occupant.
//!
//! The ring knows no subsystem's operations: each picks an [`Owner`] and
//! its own codes, except the codes a [`RingSocket`](super::socket::RingSocket)
//! uses for its operations ([`SocketOp`]), which every owner shares.

/// A subsystem whose operations share a ring; each picks its own, and
/// [`Owner::NONE`] is for operations whose completion nothing waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner(pub u8);

impl Owner {
    /// Completions nobody waits for (a cancellation's own, a close's).
    pub const NONE: Owner = Owner(0);
}

/// The operation codes of a socket on a ring, the same under every owner.
/// An owner's own codes start at [`SocketOp::FIRST_FREE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SocketOp {
    /// Connecting.
    Connect = 1,
    /// Receiving.
    Recv = 2,
    /// Sending.
    Send = 3,
    /// Shutting the write side.
    Shutdown = 4,
}

impl SocketOp {
    /// The first code an owner may use for operations of its own.
    pub const FIRST_FREE: u8 = 8;

    /// The socket operation `code` names, if it names one.
    pub fn of(code: u8) -> Option<SocketOp> {
        match code {
            1 => Some(SocketOp::Connect),
            2 => Some(SocketOp::Recv),
            3 => Some(SocketOp::Send),
            4 => Some(SocketOp::Shutdown),
            _ => None,
        }
    }
}

/// `owner` (8 bits) | `op` (8 bits) | `generation` (16 bits) | `slot` (32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// Whose operation it is.
    pub owner: Owner,
    /// Which of the owner's operations (or a [`SocketOp`]).
    pub op: u8,
    /// The owner's slot (a connection), 0 when there is none.
    pub slot: u32,
    /// The slot's generation when the operation was submitted.
    pub generation: u16,
}

impl Token {
    /// The token of the operations nothing waits for.
    pub const IGNORED: Token = Token {
        owner: Owner::NONE,
        op: 0,
        slot: 0,
        generation: 0,
    };

    /// Operation `op` of `owner`, for no slot.
    pub fn global(owner: Owner, op: u8) -> Token {
        Token {
            owner,
            op,
            slot: 0,
            generation: 0,
        }
    }

    /// The same owner, slot and generation, for operation `op`.
    pub fn with_op(self, op: u8) -> Token {
        Token { op, ..self }
    }

    /// Pack into `user_data`.
    pub fn encode(self) -> u64 {
        u64::from(self.owner.0) << 56
            | u64::from(self.op) << 48
            | u64::from(self.generation) << 32
            | u64::from(self.slot)
    }

    /// Unpack from `user_data`.
    pub fn decode(user_data: u64) -> Token {
        Token {
            owner: Owner((user_data >> 56) as u8),
            op: (user_data >> 48) as u8,
            generation: (user_data >> 32) as u16,
            slot: user_data as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for owner in [Owner::NONE, Owner(1), Owner(255)] {
            for op in [0, SocketOp::Recv as u8, SocketOp::FIRST_FREE, 255] {
                for (slot, generation) in [(0, 0), (1, 7), (u32::MAX, u16::MAX)] {
                    let token = Token {
                        owner,
                        op,
                        slot,
                        generation,
                    };
                    assert_eq!(Token::decode(token.encode()), token);
                }
            }
        }
        assert_eq!(Token::decode(0), Token::IGNORED);
        for op in [SocketOp::Connect, SocketOp::Recv, SocketOp::Send] {
            assert_eq!(SocketOp::of(op as u8), Some(op));
            assert!((op as u8) < SocketOp::FIRST_FREE);
        }
        assert_eq!(SocketOp::of(SocketOp::FIRST_FREE), None);
    }
}
