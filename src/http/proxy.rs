//! The PROXY protocol, versions 1 and 2: the header a TCP load balancer
//! (HAProxy's `send-proxy` and `send-proxy-v2`, AWS NLB, ...) sends before
//! the client's bytes, saying whom the connection is really from.
//!
//! Sans-IO like the rest of this module: [`parse`] reads the start of a
//! connection's bytes and says whether the header is complete, how long it
//! is, and the client's address. A connection that should carry one and
//! does not is refused: accepting it would let any client name itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's fixed signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 1's longest header, `\r\n` included (the specification's bound).
const V1_MAX_BYTES: usize = 107;

/// The most address and TLV bytes a version 2 header may carry here; real
/// load balancers send tens (addresses, a few TLVs), and a bound keeps a
/// connection from holding a large buffer before its first request.
pub const V2_MAX_PAYLOAD_BYTES: usize = 1024;

/// The longest header [`parse`] can ask for.
pub const MAX_HEADER_BYTES: usize = 16 + V2_MAX_PAYLOAD_BYTES;

/// What the start of a connection says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; the client's address, or `None` when
    /// the proxy speaks for itself (v2 `LOCAL`, a health check) or does
    /// not know it (`UNKNOWN`, a family other than TCP over IPv4 or IPv6).
    Complete {
        /// The header's length: the client's bytes start after it.
        len: usize,
        /// The client's address.
        client: Option<SocketAddr>,
    },
}

/// Read a PROXY header from the start of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Header, &'static str> {
    match bytes.first() {
        None => Ok(Header::Incomplete),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err("the connection does not start with a PROXY protocol header"),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Header, &'static str> {
    const BAD: &str = "a malformed PROXY protocol v1 header";
    let prefix = b"PROXY ";
    let known = bytes.len().min(prefix.len());
    if bytes[..known] != prefix[..known] {
        return Err("the connection does not start with a PROXY protocol header");
    }
    let Some(end) = memchr::memmem::find(&bytes[..bytes.len().min(V1_MAX_BYTES)], b"\r\n") else {
        return if bytes.len() >= V1_MAX_BYTES {
            Err("a PROXY protocol v1 header longer than 107 bytes")
        } else {
            Ok(Header::Incomplete)
        };
    };
    let line = std::str::from_utf8(&bytes[prefix.len()..end]).map_err(|_| BAD)?;
    let mut words = line.split(' ');
    let family = words.next().ok_or(BAD)?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Header::Complete {
            len: end + 2,
            client: None,
        });
    }
    let parts: Vec<&str> = words.collect();
    let [source, destination, source_port, destination_port] = parts[..] else {
        return Err(BAD);
    };
    let (source, _destination): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            IpAddr::V4(source.parse::<Ipv4Addr>().map_err(|_| BAD)?),
            IpAddr::V4(destination.parse::<Ipv4Addr>().map_err(|_| BAD)?),
        ),
        "TCP6" => (
            IpAddr::V6(source.parse::<Ipv6Addr>().map_err(|_| BAD)?),
            IpAddr::V6(destination.parse::<Ipv6Addr>().map_err(|_| BAD)?),
        ),
        _ => return Err(BAD),
    };
    let port = |text: &str| -> Result<u16, &'static str> {
        // Decimal without a sign or leading zeros, as the specification writes them.
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return Err(BAD);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BAD);
        }
        text.parse().map_err(|_| BAD)
    };
    let source_port = port(source_port)?;
    port(destination_port)?;
    Ok(Header::Complete {
        len: end + 2,
        client: Some(SocketAddr::new(source, source_port)),
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Header, &'static str> {
    let known = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..known] != V2_SIGNATURE[..known] {
        return Err("the connection does not start with a PROXY protocol header");
    }
    let Some(&[version_command, family, high, low]) = bytes.get(12..16) else {
        return Ok(Header::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err("a PROXY protocol v2 header of another version");
    }
    let payload = usize::from(u16::from_be_bytes([high, low]));
    if payload > V2_MAX_PAYLOAD_BYTES {
        return Err("a PROXY protocol v2 header longer than allowed");
    }
    let len = 16 + payload;
    let Some(addresses) = bytes.get(16..len) else {
        return Ok(Header::Incomplete);
    };
    let client = match version_command & 0x0f {
        // LOCAL: the proxy's own connection (a health check).
        0 => None,
        1 => match family {
            // TCP over IPv4: source, destination, source port, destination port.
            0x11 => {
                let a = addresses
                    .get(..12)
                    .ok_or("a PROXY protocol v2 header too short for its addresses")?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(
                    IpAddr::V4(ip),
                    u16::from_be_bytes([a[8], a[9]]),
                ))
            }
            // TCP over IPv6.
            0x21 => {
                let a = addresses
                    .get(..36)
                    .ok_or("a PROXY protocol v2 header too short for its addresses")?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(ip)),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // UDP, UNIX sockets, unspecified: no TCP client to name.
            _ => None,
        },
        _ => return Err("a PROXY protocol v2 header with an unknown command"),
    };
    Ok(Header::Complete { len, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    #[test]
    fn version_1_names_the_client_and_ends_at_its_line() {
        let header = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(header),
            Ok(Header::Complete {
                len: 45,
                client: Some("192.0.2.7:56324".parse().unwrap())
            })
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Ok(Header::Complete {
                len: 40,
                client: Some("[2001:db8::1]:1".parse().unwrap())
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\n"),
            Ok(Header::Complete {
                len: 24,
                client: None
            })
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let mut addresses = vec![192, 0, 2, 7, 198, 51, 100, 1];
        addresses.extend_from_slice(&56324u16.to_be_bytes());
        addresses.extend_from_slice(&443u16.to_be_bytes());
        for header in [
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n".to_vec(),
            v2(1, 0x11, &addresses),
        ] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(Header::Incomplete), "{cut}");
            }
            assert!(matches!(
                parse(&header),
                Ok(Header::Complete { len, client: Some(client) })
                    if len == header.len() && client == "192.0.2.7:56324".parse().unwrap()
            ));
        }
    }

    #[test]
    fn version_2_local_and_ipv6_and_tlvs() {
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Ok(Header::Complete {
                len: 16,
                client: None
            })
        );
        let mut addresses = [0u8; 36].to_vec();
        addresses[15] = 1;
        addresses[32..34].copy_from_slice(&8080u16.to_be_bytes());
        // A TLV after the addresses is skipped with them.
        addresses.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        assert_eq!(
            parse(&v2(1, 0x21, &addresses)),
            Ok(Header::Complete {
                len: 16 + 40,
                client: Some("[::1]:8080".parse().unwrap())
            })
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 056324 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY  TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"\r\n\r\n\0\r\nQUIX\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert!(parse(&long).is_err(), "no end within 107 bytes");
        let mut version_1 = v2(1, 0x11, &[0; 12]);
        version_1[12] = 0x11;
        assert!(parse(&version_1).is_err());
        assert!(parse(&v2(1, 0x11, &[0; 4])).is_err(), "addresses cut short");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err(), "over the payload bound");
    }
}
