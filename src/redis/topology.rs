//! Which master owns which slots, read from `CLUSTER SHARDS` (Redis 7+) or
//! `CLUSTER SLOTS` (older). Fields this code does not know are skipped, so
//! replies from newer versions still parse.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::resp::Reply;
use super::slot::SLOT_COUNT;

/// One master, its slot ranges and its replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Inclusive slot ranges.
    pub ranges: Vec<(u16, u16)>,
    /// The master's address.
    pub master: SocketAddr,
    /// Replicas that are online.
    pub replicas: Vec<SocketAddr>,
}

/// The cluster's layout as one node described it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Shards with a master that is online.
    pub shards: Vec<Shard>,
}

impl Topology {
    /// Parse a `CLUSTER SHARDS` reply from the node at `asked`; `tls`:
    /// take each node's `tls-port` (the reply names both ports, whatever
    /// the connection; `CLUSTER SLOTS` and redirects give the one that
    /// matches it).
    pub fn from_shards(
        reply: &Reply<'_>,
        asked: SocketAddr,
        tls: bool,
    ) -> Result<Topology, String> {
        let Reply::Array(shards) = reply else {
            return Err(unexpected("CLUSTER SHARDS", reply));
        };
        let mut topology = Topology::default();
        for shard in shards {
            let entries = shard
                .entries()
                .ok_or_else(|| unexpected("a CLUSTER SHARDS shard", shard))?;
            let mut ranges = Vec::new();
            let mut master = None;
            let mut replicas = Vec::new();
            for (key, value) in entries {
                match key.bytes() {
                    Some(b"slots") => {
                        let Reply::Array(bounds) = value else {
                            return Err(unexpected("shard slots", value));
                        };
                        for pair in bounds.chunks(2) {
                            let [start, end] = pair else {
                                return Err("shard slots: an odd number of bounds".into());
                            };
                            ranges.push((slot_number(start)?, slot_number(end)?));
                        }
                    }
                    Some(b"nodes") => {
                        let Reply::Array(nodes) = value else {
                            return Err(unexpected("shard nodes", value));
                        };
                        for node in nodes {
                            let node = ShardNode::parse(node, asked, tls)?;
                            if !node.online {
                                continue;
                            }
                            if node.master {
                                master = Some(node.address);
                            } else {
                                replicas.push(node.address);
                            }
                        }
                    }
                    _ => {} // A field added by a newer Redis.
                }
            }
            // A shard without slots (an empty master) or without a live master serves nothing.
            if let Some(master) = master
                && !ranges.is_empty()
            {
                topology.shards.push(Shard {
                    ranges,
                    master,
                    replicas,
                });
            }
        }
        Ok(topology)
    }

    /// Parse a `CLUSTER SLOTS` reply from the node at `asked`.
    pub fn from_slots(reply: &Reply<'_>, asked: SocketAddr) -> Result<Topology, String> {
        let Reply::Array(ranges) = reply else {
            return Err(unexpected("CLUSTER SLOTS", reply));
        };
        let mut topology = Topology::default();
        for range in ranges {
            let Reply::Array(fields) = range else {
                return Err(unexpected("a CLUSTER SLOTS range", range));
            };
            let [start, end, master, replicas @ ..] = fields.as_slice() else {
                return Err("a CLUSTER SLOTS range with fewer than 3 fields".into());
            };
            let range = (slot_number(start)?, slot_number(end)?);
            let master = slots_node(master, asked)?;
            let replicas = replicas
                .iter()
                .map(|r| slots_node(r, asked))
                .collect::<Result<Vec<_>, _>>()?;
            match topology.shards.iter_mut().find(|s| s.master == master) {
                Some(shard) => shard.ranges.push(range),
                None => topology.shards.push(Shard {
                    ranges: vec![range],
                    master,
                    replicas,
                }),
            }
        }
        Ok(topology)
    }

    /// Every slot has a master.
    pub fn covers_every_slot(&self) -> bool {
        let mut covered = vec![false; usize::from(SLOT_COUNT)];
        for shard in &self.shards {
            for &(start, end) in &shard.ranges {
                for slot in start..=end.min(SLOT_COUNT - 1) {
                    covered[usize::from(slot)] = true;
                }
            }
        }
        covered.iter().all(|&c| c)
    }
}

/// One node of a `CLUSTER SHARDS` shard.
struct ShardNode {
    address: SocketAddr,
    master: bool,
    online: bool,
}

impl ShardNode {
    fn parse(reply: &Reply<'_>, asked: SocketAddr, tls: bool) -> Result<ShardNode, String> {
        let entries = reply
            .entries()
            .ok_or_else(|| unexpected("a shard node", reply))?;
        let (mut ip, mut endpoint, mut port, mut master, mut online) =
            (None, None, None, false, true);
        let port_field: &[u8] = if tls { b"tls-port" } else { b"port" };
        for (key, value) in entries {
            match key.bytes() {
                Some(b"ip") => ip = value.bytes(),
                Some(b"endpoint") => endpoint = value.bytes(),
                Some(field) if field == port_field => port = value.integer(),
                Some(b"role") => master = value.bytes() == Some(b"master"),
                Some(b"health") => online = value.bytes() == Some(b"online"),
                _ => {}
            }
        }
        let port = port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or(if tls {
                "a shard node without a tls-port (is TLS on in the cluster?)"
            } else {
                "a shard node without a port"
            })?;
        Ok(ShardNode {
            address: address(ip.or(endpoint), port, asked)?,
            master,
            online,
        })
    }
}

/// `[ip, port, id, ...]` in `CLUSTER SLOTS`.
fn slots_node(reply: &Reply<'_>, asked: SocketAddr) -> Result<SocketAddr, String> {
    let Reply::Array(fields) = reply else {
        return Err(unexpected("a CLUSTER SLOTS node", reply));
    };
    let host = fields.first().and_then(Reply::bytes);
    let port = fields
        .get(1)
        .and_then(Reply::integer)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("a CLUSTER SLOTS node without a port")?;
    address(host, port, asked)
}

/// A node's address; an empty or `?` host means the node that was asked.
fn address(host: Option<&[u8]>, port: u16, asked: SocketAddr) -> Result<SocketAddr, String> {
    let host = host
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_default();
    if host.is_empty() || host == "?" {
        return Ok(SocketAddr::new(asked.ip(), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve cluster node {host}"))
}

fn slot_number(reply: &Reply<'_>) -> Result<u16, String> {
    reply
        .integer()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n < SLOT_COUNT)
        .ok_or_else(|| unexpected("a slot number", reply))
}

fn unexpected(what: &str, reply: &Reply<'_>) -> String {
    let mut shown = format!("{reply:?}");
    shown.truncate(120);
    format!("unexpected {what} reply: {shown}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::{Protocol, decode};

    const ASKED: &str = "127.0.0.1:7000";

    fn parse(protocol: Protocol, bytes: &[u8]) -> Reply<'_> {
        decode(protocol, bytes).unwrap().unwrap().0
    }

    /// Two shards, RESP2, as Redis 7.0 prints them, plus a field from the future.
    const SHARDS_RESP2: &[u8] = b"*2\r\n\
*4\r\n$5\r\nslots\r\n*4\r\n:0\r\n:100\r\n:200\r\n:300\r\n$5\r\nnodes\r\n*2\r\n\
*14\r\n$2\r\nid\r\n$3\r\nabc\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n$6\r\nfuture\r\n$1\r\nx\r\n\
*12\r\n$2\r\nid\r\n$3\r\ndef\r\n$4\r\nport\r\n:7003\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nrole\r\n$7\r\nreplica\r\n$6\r\nhealth\r\n$6\r\nonline\r\n\
*4\r\n$5\r\nslots\r\n*2\r\n:101\r\n:199\r\n$5\r\nnodes\r\n*1\r\n\
*8\r\n$4\r\nport\r\n:7001\r\n$2\r\nip\r\n$0\r\n\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n";

    #[test]
    fn parses_cluster_shards() {
        let asked: SocketAddr = ASKED.parse().unwrap();
        let topology =
            Topology::from_shards(&parse(Protocol::Resp2, SHARDS_RESP2), asked, false).unwrap();
        assert_eq!(
            topology.shards,
            [
                Shard {
                    ranges: vec![(0, 100), (200, 300)],
                    master: "127.0.0.1:7000".parse().unwrap(),
                    replicas: vec!["127.0.0.1:7003".parse().unwrap()],
                },
                Shard {
                    ranges: vec![(101, 199)],
                    master: "127.0.0.1:7001".parse().unwrap(),
                    replicas: vec![],
                },
            ]
        );
        assert!(!topology.covers_every_slot());
    }

    #[test]
    fn parses_cluster_shards_as_resp3_maps() {
        let bytes = b"*1\r\n%2\r\n+slots\r\n*2\r\n:0\r\n:16383\r\n+nodes\r\n*1\r\n\
%4\r\n+port\r\n:7000\r\n+ip\r\n+127.0.0.1\r\n+role\r\n+master\r\n+health\r\n+online\r\n";
        let asked: SocketAddr = ASKED.parse().unwrap();
        let topology = Topology::from_shards(&parse(Protocol::Resp3, bytes), asked, false).unwrap();
        assert_eq!(topology.shards.len(), 1);
        assert!(topology.covers_every_slot());
    }

    #[test]
    fn a_failed_master_serves_nothing() {
        let bytes = b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
*8\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$4\r\nfail\r\n";
        let asked: SocketAddr = ASKED.parse().unwrap();
        let topology = Topology::from_shards(&parse(Protocol::Resp2, bytes), asked, false).unwrap();
        assert!(topology.shards.is_empty());
    }

    #[test]
    fn parses_cluster_slots() {
        let bytes = b"*2\r\n\
*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$3\r\nabc\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$3\r\ndef\r\n\
*3\r\n:8192\r\n:16383\r\n*4\r\n$0\r\n\r\n:7001\r\n$3\r\nghi\r\n*0\r\n";
        let asked: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let topology = Topology::from_slots(&parse(Protocol::Resp2, bytes), asked).unwrap();
        assert_eq!(topology.shards.len(), 2);
        assert_eq!(topology.shards[1].master, "127.0.0.2:7001".parse().unwrap());
        assert_eq!(topology.shards[0].replicas.len(), 1);
        assert!(topology.covers_every_slot());
    }

    #[test]
    fn garbage_is_an_error() {
        let asked: SocketAddr = ASKED.parse().unwrap();
        for reply in [
            Reply::Integer(1),
            Reply::Array(vec![Reply::Integer(1)]),
            Reply::Array(vec![Reply::Array(vec![
                Reply::Bulk(b"slots"),
                Reply::Array(vec![Reply::Integer(99_999), Reply::Integer(1)]),
            ])]),
        ] {
            assert!(
                Topology::from_shards(&reply, asked, false).is_err(),
                "{reply:?}"
            );
            assert!(Topology::from_slots(&reply, asked).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn a_tls_client_takes_each_nodes_tls_port() {
        let asked = ASKED.parse().unwrap();
        let bytes = b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
*12\r\n$4\r\nport\r\n:7000\r\n$8\r\ntls-port\r\n:8000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n\
$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n$2\r\nid\r\n$1\r\nx\r\n";
        let reply = parse(Protocol::Resp2, bytes);
        let plain = Topology::from_shards(&reply, asked, false).unwrap();
        assert_eq!(plain.shards[0].master, "127.0.0.1:7000".parse().unwrap());
        let tls = Topology::from_shards(&reply, asked, true).unwrap();
        assert_eq!(tls.shards[0].master, "127.0.0.1:8000".parse().unwrap());
        // A cluster without TLS has no tls-port to give.
        let without = b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n\
*6\r\n$4\r\nport\r\n:7000\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nrole\r\n$6\r\nmaster\r\n";
        let error =
            Topology::from_shards(&parse(Protocol::Resp2, without), asked, true).unwrap_err();
        assert!(error.contains("tls-port"), "{error}");
    }
}
