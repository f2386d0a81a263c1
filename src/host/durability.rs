//! What a `202 Accepted` survives, read from the running settings of each
//! Redis master and of PostgreSQL, and said plainly.
//!
//! A 202 means the write is in a Redis stream; it reaches PostgreSQL only
//! if that stream outlives the Redis process that took it, and it stays
//! there only if PostgreSQL keeps what it commits (the database core trims
//! the stream after the commit). [`assess_redis`] and [`assess_postgres`]
//! are pure: settings in, findings out. [`redis_findings`] and
//! [`postgres_findings`] read the settings; [`enforce`] logs the findings
//! and refuses to start on an unsafe one unless the operator accepted the
//! risk (`accept_unsafe_durability`). docs/reliability.md has the table
//! behind each finding.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::redis::command::Command;
use crate::redis::driver::Client;
use crate::redis::resp::OwnedReply;

/// How a finding bears on acknowledged writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Nothing acknowledged is at risk; the text says what is survived.
    Ok,
    /// A weaker guarantee, or a limit worth knowing: logged as a warning.
    Warn,
    /// An acknowledged write would be lost by an ordinary event (a
    /// restart, an eviction): a refusal to start, unless accepted.
    Unsafe,
}

/// One thing found, about one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Which server: `redis 127.0.0.1:7000`, `postgresql`.
    pub subject: String,
    /// How it bears on acknowledged writes.
    pub severity: Severity,
    /// What was found and what it means, in a sentence or two.
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.text)
    }
}

/// The settings of one Redis master that bear on durability and memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisSettings {
    /// `appendonly`: `yes` or `no`.
    pub appendonly: String,
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// `save`: the RDB snapshot schedule, empty for none.
    pub save: String,
    /// `maxmemory`, in bytes; 0 for no limit.
    pub maxmemory: u64,
    /// `maxmemory-policy`.
    pub policy: String,
    /// Replicas connected to it (`INFO replication`).
    pub replicas: u32,
}

/// What a master's settings mean for the writes it acknowledges, given
/// how many replicas must confirm each (`ack_replicas`; `None` where that
/// is the servers' setting, not this process's).
pub fn assess_redis(
    address: &str,
    settings: &RedisSettings,
    ack_replicas: Option<u32>,
) -> Vec<Finding> {
    let subject = format!("redis {address}");
    let finding = |severity, text: String| Finding {
        subject: subject.clone(),
        severity,
        text,
    };
    let mut findings = Vec::new();
    findings.push(match (settings.appendonly.as_str(), settings.appendfsync.as_str()) {
        ("yes", "always") => finding(
            Severity::Ok,
            "appendonly yes, appendfsync always: every acknowledged write is on disk before its \
             reply, so it survives a Redis crash and a host crash or power loss"
                .into(),
        ),
        ("yes", "everysec") => finding(
            Severity::Ok,
            "appendonly yes, appendfsync everysec: acknowledged writes survive a Redis crash; a \
             host crash or power loss may lose about the last second of them (up to 2 s when \
             the disk stalls)"
                .into(),
        ),
        ("yes", other) => finding(
            Severity::Warn,
            format!(
                "appendonly yes, appendfsync {other}: acknowledged writes survive a Redis crash, \
                 but the kernel flushes the file when it likes (about every 30 s), and a host \
                 crash may lose that much; use appendfsync everysec or always"
            ),
        ),
        (_, _) if !settings.save.trim().is_empty() => finding(
            Severity::Unsafe,
            format!(
                "appendonly no, RDB snapshots only (save \"{}\"): a restart brings this master \
                 back as of its last snapshot, and every write acknowledged after it that was not \
                 yet written back is lost; set appendonly yes",
                settings.save.trim()
            ),
        ),
        (_, _) => finding(
            Severity::Unsafe,
            "appendonly no and no snapshots: a restart brings this master back empty (its \
             replicas resync to the empty copy), and every acknowledged write not yet written \
             back is lost; set appendonly yes"
                .into(),
        ),
    });
    findings.push(match settings.policy.as_str() {
        policy if policy.starts_with("allkeys-") => finding(
            Severity::Unsafe,
            format!(
                "maxmemory-policy {policy} may evict a write-back stream or a cache entry not yet \
                 written back: acknowledged writes lost, or an older value served; use \
                 volatile-lru, which evicts only keys with a TTL (written-back entries and \
                 cached misses)"
            ),
        ),
        policy if policy.starts_with("volatile-") => finding(
            Severity::Ok,
            format!(
                "maxmemory-policy {policy}: only keys with a TTL can be evicted, which are cache \
                 entries already written back and cached misses, never the queue"
            ),
        ),
        policy => finding(
            Severity::Warn,
            format!(
                "maxmemory-policy {policy}: nothing is evicted to make room, so written-back \
                 cache entries leave only when their TTL (cache_ttl_ms) ends; volatile-lru \
                 evicts them first, and never the queue"
            ),
        ),
    });
    if settings.maxmemory == 0 {
        findings.push(finding(
            Severity::Warn,
            "no maxmemory: Redis grows until the host runs out of memory and the kernel kills \
             it; set maxmemory (millrace plan sizes it) so that writes get 503 instead"
                .into(),
        ));
    }
    let Some(ack_replicas) = ack_replicas else {
        return findings;
    };
    match (settings.replicas, ack_replicas) {
        (0, _) => findings.push(finding(
            Severity::Warn,
            "no replica: while this master is down its partitions answer 503, and the loss of \
             its disk loses what it held"
                .into(),
        )),
        (_, 0) => findings.push(finding(
            Severity::Warn,
            format!(
                "{} replica(s), ack_replicas = 0: replication is asynchronous, so a failover \
                 may lose the last writes this master acknowledged and had not passed on; \
                 ack_replicas = 1 waits for one replica before each 202",
                settings.replicas
            ),
        )),
        (replicas, wanted) if replicas < wanted => findings.push(finding(
            Severity::Warn,
            format!(
                "{replicas} replica(s), fewer than ack_replicas = {wanted}: writes to this \
                 master's partitions are refused with 503 until enough replicas join"
            ),
        )),
        _ => {}
    }
    findings
}

/// The settings of PostgreSQL that bear on keeping what it commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostgresSettings {
    /// `fsync`.
    pub fsync: String,
    /// `synchronous_commit`, as the database core's session sees it.
    pub synchronous_commit: String,
    /// `full_page_writes`.
    pub full_page_writes: String,
    /// `synchronous_standby_names`, empty for none.
    pub synchronous_standby_names: String,
    /// Standbys streaming from it now (`pg_stat_replication`), if readable.
    pub standbys: Option<i64>,
}

/// What PostgreSQL's settings mean for rows the database core committed
/// (and then trimmed from Redis, so that the database is their only copy).
pub fn assess_postgres(settings: &PostgresSettings) -> Vec<Finding> {
    let finding = |severity, text: String| Finding {
        subject: "postgresql".into(),
        severity,
        text,
    };
    let mut findings = Vec::new();
    if settings.fsync == "off" {
        findings.push(finding(
            Severity::Unsafe,
            "fsync = off: a host crash can lose or corrupt committed rows, whose entries the \
             database core has already trimmed from Redis; set fsync = on"
                .into(),
        ));
    }
    if settings.full_page_writes == "off" {
        findings.push(finding(
            Severity::Unsafe,
            "full_page_writes = off: a crash can leave torn pages that recovery cannot repair; \
             set full_page_writes = on"
                .into(),
        ));
    }
    let standbys = settings.standbys.unwrap_or(0);
    let synchronous = !settings.synchronous_standby_names.trim().is_empty();
    findings.push(match settings.synchronous_commit.as_str() {
        "off" => finding(
            Severity::Unsafe,
            "synchronous_commit = off: a commit returns before it is on disk, so a PostgreSQL \
             crash loses the last commits (up to 3 x wal_writer_delay), whose entries are \
             already trimmed from Redis; set synchronous_commit = on for the database core's \
             role or database"
                .into(),
        ),
        "local" if synchronous => finding(
            Severity::Warn,
            "synchronous_commit = local: commits do not wait for the synchronous standby, so a \
             failover to it may lose the last commits; use on or remote_apply"
                .into(),
        ),
        level if standbys > 0 && !synchronous => finding(
            Severity::Warn,
            format!(
                "synchronous_commit = {level} with {standbys} asynchronous standby(s): a standby \
                 promoted after a crash may lack the last commits, already trimmed from Redis; \
                 name it in synchronous_standby_names (with synchronous_commit = on or \
                 remote_apply) so that each commit waits for it"
            ),
        ),
        "remote_write" if synchronous => finding(
            Severity::Warn,
            "synchronous_commit = remote_write: the standby has the commit in memory, not on \
             disk; losing both hosts at once loses the last commits; on or remote_apply \
             flushes it"
                .into(),
        ),
        level if synchronous => finding(
            Severity::Ok,
            format!(
                "synchronous_commit = {level}, synchronous standby(s) {}: a commit is on disk \
                 here and on a standby before the database core trims its entries",
                settings.synchronous_standby_names.trim()
            ),
        ),
        level => finding(
            Severity::Ok,
            format!(
                "synchronous_commit = {level}, no standby: a commit is on disk before the \
                 database core trims its entries; it survives a crash, not the loss of the disk"
            ),
        ),
    });
    findings
}

/// Each master's settings, read with `CONFIG GET` and `INFO replication`,
/// assessed. A master whose settings cannot be read (a managed Redis that
/// renames `CONFIG`, an ACL without it) is a warning, not a failure.
pub fn redis_findings(client: &mut Client, ack_replicas: Option<u32>) -> Vec<Finding> {
    let masters = client.slot_per_master();
    let mut commands = Vec::new();
    for &(_, slot) in &masters {
        commands.push(
            Command::new(
                &[
                    "CONFIG",
                    "GET",
                    "appendonly",
                    "appendfsync",
                    "save",
                    "maxmemory",
                    "maxmemory-policy",
                ],
                None,
            )
            .routed_to(slot),
        );
        commands.push(Command::new(&["INFO", "replication"], None).routed_to(slot));
    }
    let replies = client.execute(commands);
    let mut findings = Vec::new();
    for (&(address, _), pair) in masters.iter().zip(replies.chunks(2)) {
        let [config, info] = pair else { continue };
        match (config, info) {
            (Ok(config), Ok(info)) => match redis_settings(config, info) {
                Some(settings) => {
                    findings.extend(assess_redis(&address.to_string(), &settings, ack_replicas))
                }
                None => findings.push(unreadable(address, &format!("{config:?}"))),
            },
            (Err(e), _) | (_, Err(e)) => findings.push(unreadable(address, &e.to_string())),
        }
    }
    findings
}

fn unreadable(address: std::net::SocketAddr, why: &str) -> Finding {
    Finding {
        subject: format!("redis {address}"),
        severity: Severity::Warn,
        text: format!(
            "its persistence and memory settings cannot be read (CONFIG GET: {why}); check \
             by hand that appendonly is yes and maxmemory-policy is volatile-lru"
        ),
    }
}

/// The settings from a `CONFIG GET` reply (pairs, or a RESP3 map) and an
/// `INFO replication` reply.
fn redis_settings(config: &OwnedReply, info: &OwnedReply) -> Option<RedisSettings> {
    let pairs: Vec<(&[u8], &[u8])> = match config {
        OwnedReply::Array(items) => items
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].bytes()?, pair[1].bytes()?)))
            .collect(),
        OwnedReply::Map(entries) => entries
            .iter()
            .filter_map(|(k, v)| Some((k.bytes()?, v.bytes()?)))
            .collect(),
        _ => return None,
    };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| *k == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let info = String::from_utf8_lossy(info.bytes()?).into_owned();
    let replicas = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Some(RedisSettings {
        appendonly: get("appendonly")?,
        appendfsync: get("appendfsync")?,
        save: get("save").unwrap_or_default(),
        maxmemory: get("maxmemory")?.parse().ok()?,
        policy: get("maxmemory-policy")?,
        replicas,
    })
}

/// PostgreSQL's settings as the database core's connection sees them,
/// assessed.
pub async fn postgres_findings(url: &str, ca_file: Option<&Path>) -> Result<Vec<Finding>, String> {
    let tables = crate::writeback::table::Tables::default();
    let database = crate::writeback::db::Database::connect_only(url, ca_file, &tables).await?;
    let client = database.client();
    let settings = PostgresSettings {
        fsync: show(client, "fsync").await?,
        synchronous_commit: show(client, "synchronous_commit").await?,
        full_page_writes: show(client, "full_page_writes").await?,
        synchronous_standby_names: show(client, "synchronous_standby_names").await?,
        standbys: client
            .query_one("select count(*) from pg_stat_replication", &[])
            .await
            .ok()
            .map(|row| row.get::<_, i64>(0)),
    };
    Ok(assess_postgres(&settings))
}

/// `SHOW name`.
async fn show(client: &tokio_postgres::Client, name: &str) -> Result<String, String> {
    client
        .query_one(&format!("show {name}"), &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| format!("show {name}: {e}"))
}

/// [`postgres_findings`] on a runtime of its own, for start-up checks on a
/// plain thread, within `limit`.
pub fn postgres_findings_blocking(
    url: &str,
    ca_file: Option<&Path>,
    limit: Duration,
) -> Result<Vec<Finding>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the PostgreSQL checks: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        tokio::time::timeout(limit, postgres_findings(url, ca_file))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
    })
}

/// The start-up check of `serve` and `writeback`: every master's settings
/// and, given its URL, PostgreSQL's; enforced ([`enforce`]). PostgreSQL
/// that cannot be reached yet is a warning: the database core waits for it.
pub fn check_at_start(
    client: &mut Client,
    ack_replicas: Option<u32>,
    postgres: Option<(&str, Option<&Path>, Duration)>,
    accepted: bool,
) -> Result<(), String> {
    let mut findings = redis_findings(client, ack_replicas);
    if let Some((url, ca_file, limit)) = postgres {
        match postgres_findings_blocking(url, ca_file, limit) {
            Ok(more) => findings.extend(more),
            Err(why) => findings.push(Finding {
                subject: "postgresql".into(),
                severity: Severity::Warn,
                text: format!(
                    "its settings cannot be checked yet ({why}); the database core waits for it"
                ),
            }),
        }
    }
    enforce(&findings, accepted)
}

/// Log every finding; refuse (an error listing the unsafe ones) unless
/// `accepted`, in which case they are logged as errors and start-up goes on.
pub fn enforce(findings: &[Finding], accepted: bool) -> Result<(), String> {
    // One line per distinct finding, naming every server it holds for.
    let mut lines: Vec<(Severity, &str, Vec<&str>)> = Vec::new();
    for finding in findings {
        match lines
            .iter_mut()
            .find(|(severity, text, _)| *severity == finding.severity && *text == finding.text)
        {
            Some((_, _, subjects)) => subjects.push(&finding.subject),
            None => lines.push((finding.severity, &finding.text, vec![&finding.subject])),
        }
    }
    for (severity, text, subjects) in lines {
        let subjects = subjects.join(", ");
        match severity {
            Severity::Ok => tracing::info!(%subjects, "durability: {text}"),
            Severity::Warn => tracing::warn!(%subjects, "durability: {text}"),
            Severity::Unsafe => tracing::error!(%subjects, "durability: {text}"),
        }
    }
    let unsafe_ones: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Unsafe)
        .map(Finding::to_string)
        .collect();
    if unsafe_ones.is_empty() || accepted {
        return Ok(());
    }
    Err(format!(
        "acknowledged writes would not survive an ordinary restart with these settings: {}. Fix \
         them, or start with accept_unsafe_durability = true to run anyway",
        unsafe_ones.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(appendonly: &str, appendfsync: &str, policy: &str) -> RedisSettings {
        RedisSettings {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            save: String::new(),
            maxmemory: 1 << 30,
            policy: policy.into(),
            replicas: 1,
        }
    }

    fn worst(findings: &[Finding]) -> Severity {
        findings.iter().map(|f| f.severity).max().unwrap()
    }

    #[test]
    fn redis_persistence_and_policy_decide_what_a_202_survives() {
        let cases = [
            (
                redis("yes", "everysec", "volatile-lru"),
                1,
                Severity::Ok,
                "about the last second",
            ),
            (
                redis("yes", "always", "volatile-lfu"),
                1,
                Severity::Ok,
                "power loss",
            ),
            (
                redis("yes", "no", "volatile-lru"),
                1,
                Severity::Warn,
                "30 s",
            ),
            (
                redis("no", "everysec", "volatile-lru"),
                1,
                Severity::Unsafe,
                "back empty",
            ),
            (
                redis("yes", "everysec", "allkeys-lru"),
                1,
                Severity::Unsafe,
                "may evict a write-back stream",
            ),
            (
                redis("yes", "everysec", "noeviction"),
                1,
                Severity::Warn,
                "TTL",
            ),
            (
                redis("yes", "everysec", "volatile-lru"),
                0,
                Severity::Warn,
                "asynchronous",
            ),
        ];
        for (settings, ack, severity, phrase) in cases {
            let findings = assess_redis("a:1", &settings, Some(ack));
            assert_eq!(worst(&findings), severity, "{settings:?}: {findings:?}");
            assert!(
                findings.iter().any(|f| f.text.contains(phrase)),
                "{phrase:?} in {findings:?}"
            );
        }
        let snapshots = RedisSettings {
            save: "3600 1".into(),
            ..redis("no", "everysec", "volatile-lru")
        };
        let findings = assess_redis("a:1", &snapshots, Some(1));
        assert!(
            findings
                .iter()
                .any(|f| f.severity == Severity::Unsafe && f.text.contains("last snapshot"))
        );
        let unbounded = RedisSettings {
            maxmemory: 0,
            ..redis("yes", "everysec", "volatile-lru")
        };
        assert!(
            assess_redis("a:1", &unbounded, Some(1))
                .iter()
                .any(|f| f.text.contains("no maxmemory"))
        );
        let alone = RedisSettings {
            replicas: 0,
            ..redis("yes", "everysec", "volatile-lru")
        };
        assert!(
            assess_redis("a:1", &alone, Some(0))
                .iter()
                .any(|f| f.text.contains("no replica"))
        );
    }

    #[test]
    fn postgres_commit_settings_decide_what_a_committed_row_survives() {
        let base = PostgresSettings {
            fsync: "on".into(),
            synchronous_commit: "on".into(),
            full_page_writes: "on".into(),
            synchronous_standby_names: String::new(),
            standbys: Some(0),
        };
        assert_eq!(worst(&assess_postgres(&base)), Severity::Ok);
        let off = PostgresSettings {
            synchronous_commit: "off".into(),
            ..base.clone()
        };
        assert_eq!(worst(&assess_postgres(&off)), Severity::Unsafe);
        let no_fsync = PostgresSettings {
            fsync: "off".into(),
            ..base.clone()
        };
        assert_eq!(worst(&assess_postgres(&no_fsync)), Severity::Unsafe);
        let async_standby = PostgresSettings {
            standbys: Some(1),
            ..base.clone()
        };
        let findings = assess_postgres(&async_standby);
        assert_eq!(worst(&findings), Severity::Warn);
        assert!(
            findings[0].text.contains("synchronous_standby_names"),
            "{findings:?}"
        );
        let sync_standby = PostgresSettings {
            standbys: Some(1),
            synchronous_standby_names: "standby1".into(),
            ..base.clone()
        };
        assert_eq!(worst(&assess_postgres(&sync_standby)), Severity::Ok);
        let local = PostgresSettings {
            synchronous_commit: "local".into(),
            ..sync_standby
        };
        assert_eq!(worst(&assess_postgres(&local)), Severity::Warn);
    }

    #[test]
    fn config_get_replies_are_read_in_both_protocols() {
        let bulk = |s: &str| OwnedReply::Bulk(s.as_bytes().to_vec());
        let names = [
            "appendonly",
            "yes",
            "appendfsync",
            "always",
            "save",
            "",
            "maxmemory",
            "100",
            "maxmemory-policy",
            "volatile-ttl",
        ];
        let info = bulk("# Replication\r\nrole:master\r\nconnected_slaves:2\r\n");
        let resp2 = OwnedReply::Array(names.iter().map(|s| bulk(s)).collect());
        let resp3 = OwnedReply::Map(names.chunks(2).map(|p| (bulk(p[0]), bulk(p[1]))).collect());
        let expected = RedisSettings {
            appendonly: "yes".into(),
            appendfsync: "always".into(),
            save: String::new(),
            maxmemory: 100,
            policy: "volatile-ttl".into(),
            replicas: 2,
        };
        assert_eq!(redis_settings(&resp2, &info), Some(expected.clone()));
        assert_eq!(redis_settings(&resp3, &info), Some(expected));
        assert_eq!(
            redis_settings(&OwnedReply::Error(b"ERR unknown command".to_vec()), &info),
            None
        );
    }

    #[test]
    fn unsafe_findings_refuse_to_start_unless_accepted() {
        let findings = assess_redis("a:1", &redis("no", "everysec", "allkeys-lru"), None);
        let error = enforce(&findings, false).unwrap_err();
        assert!(
            error.contains("appendonly no") && error.contains("allkeys-lru"),
            "{error}"
        );
        assert!(error.contains("accept_unsafe_durability"), "{error}");
        enforce(&findings, true).unwrap();
        enforce(
            &assess_redis("a:1", &redis("yes", "everysec", "volatile-lru"), Some(1)),
            false,
        )
        .unwrap();
        // The replica finding is the servers' to make, not a database core's.
        let alone = RedisSettings {
            replicas: 0,
            ..redis("yes", "everysec", "volatile-lru")
        };
        assert_eq!(assess_redis("a:1", &alone, None).len(), 2);
    }
}
