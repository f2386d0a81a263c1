//! The 64-bit `user_data` every submission carries: what the operation was
//! and which connection it belongs to. The generation tells a completion for a
//! reused connection slot from one for its previous occupant.

/// What a completion is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// The listener's multishot accept.
    Accept = 1,
    /// A connection's multishot receive.
    Recv = 2,
    /// A connection's send.
    Send = 3,
    /// A cancellation request; its own completion carries nothing.
    Cancel = 4,
    /// The read on the executor's wake-up eventfd.
    Wake = 5,
    /// A load generator connection's connect.
    Connect = 6,
    /// A Redis connection's connect.
    RedisConnect = 7,
    /// A Redis connection's receive.
    RedisRecv = 8,
    /// A Redis connection's send.
    RedisSend = 9,
    /// The read on the eventfd that says read-through answers are waiting.
    Lookup = 10,
    /// A shutdown or close of a connection's socket; nothing waits for it.
    Teardown = 11,
}

/// `kind` (8 bits) | `generation` (24 bits) | `slot` (32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The operation.
    pub kind: OpKind,
    /// The connection slot, 0 when there is none.
    pub slot: u32,
    /// The slot's generation when the operation was submitted.
    pub generation: u32,
}

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Token {
    /// A token for an operation that belongs to no connection.
    pub fn global(kind: OpKind) -> Self {
        Token {
            kind,
            slot: 0,
            generation: 0,
        }
    }

    /// Pack into `user_data`.
    pub fn encode(self) -> u64 {
        (self.kind as u64) << 56
            | u64::from(self.generation & GENERATION_MASK) << 32
            | u64::from(self.slot)
    }

    /// Unpack from `user_data`; `None` for a value no token encodes.
    pub fn decode(user_data: u64) -> Option<Self> {
        let kind = match user_data >> 56 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Cancel,
            5 => OpKind::Wake,
            6 => OpKind::Connect,
            7 => OpKind::RedisConnect,
            8 => OpKind::RedisRecv,
            9 => OpKind::RedisSend,
            10 => OpKind::Lookup,
            11 => OpKind::Teardown,
            _ => return None,
        };
        Some(Token {
            kind,
            generation: (user_data >> 32) as u32 & GENERATION_MASK,
            slot: user_data as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for kind in [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::Send,
            OpKind::Cancel,
            OpKind::Wake,
            OpKind::Connect,
            OpKind::RedisConnect,
            OpKind::RedisRecv,
            OpKind::RedisSend,
            OpKind::Lookup,
            OpKind::Teardown,
        ] {
            for (slot, generation) in [(0, 0), (1, 7), (u32::MAX, GENERATION_MASK)] {
                let token = Token {
                    kind,
                    slot,
                    generation,
                };
                assert_eq!(Token::decode(token.encode()), Some(token));
            }
        }
        assert_eq!(Token::decode(0), None);
    }
}
