//! Redis Cluster hash slots: CRC16/XMODEM of the key (or of its hash tag)
//! modulo 16,384.

/// Hash slots in a Redis Cluster.
pub const SLOT_COUNT: u16 = 16_384;

/// A hash slot, always below [`SLOT_COUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    /// The slot `key` belongs to. When the key holds a hash tag (the part
    /// between its first `{` and the first `}` after it, if that is not
    /// empty), only the tag is hashed, so that keys sharing a tag share a slot.
    pub fn of(key: &[u8]) -> Slot {
        Slot(crc16(hash_tag(key)) % SLOT_COUNT)
    }

    /// `n` as a slot, if it is one.
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOT_COUNT).then_some(Slot(n))
    }

    /// The slot's number.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// The part of `key` that is hashed.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0, no reflection), the
/// variant Redis Cluster uses, a byte at a time from a table.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The catalogue check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_as_redis_computes_them() {
        // Values from CLUSTER KEYSLOT on Redis 7.
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"123456789", 12739),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
            (b"user1000", 3443),
            (b"foo{}{bar}", 8363),
            (b"foo{{bar}}zap", 4015),
            (b"foo{bar}{zap}", 5061),
            (b"{}", 15257),
            (b"", 0),
        ] {
            assert_eq!(
                Slot::of(key).get(),
                slot,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn hash_tags() {
        for (key, tag) in [
            (&b"{a}b"[..], &b"a"[..]),
            (b"x{a}b{c}", b"a"),
            (b"{}a", b"{}a"),
            (b"a{b", b"a{b"),
            (b"a}b{", b"a}b{"),
            (b"{{a}}", b"{a"),
            (b"a{}{b}", b"a{}{b}"),
        ] {
            assert_eq!(hash_tag(key), tag, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn slots_are_in_range() {
        assert_eq!(Slot::new(16_383).map(Slot::get), Some(16_383));
        assert_eq!(Slot::new(16_384), None);
    }
}
