//! `millrace doctor`: whether this host can run millrace, and how well.
//! Each line is a check, its verdict and the figure behind it; failures say
//! what fixes them. Exits non-zero when io_uring cannot run.

use std::fmt::Write as _;

use crate::host::probe::{self, RingFeatures};
use crate::server::available_cpus;

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// millrace cannot run.
    Fail,
}

/// One line of the report.
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// The figure found, and the fix when it is not `Ok`.
    pub detail: String,
}

/// Run every check.
pub fn checks() -> Vec<Check> {
    let mut checks = vec![Check {
        name: "kernel",
        verdict: Verdict::Ok,
        detail: kernel_release(),
    }];
    match probe::probe_ring() {
        Err(why) => checks.push(Check {
            name: "io_uring",
            verdict: Verdict::Fail,
            detail: why,
        }),
        Ok(features) => ring_checks(&features, &mut checks),
    }
    checks.push(memlock_check());
    checks.push(open_files_check());
    checks.push(somaxconn_check());
    let cpus = available_cpus();
    checks.push(Check {
        name: "CPUs",
        verdict: if cpus.is_empty() {
            Verdict::Fail
        } else {
            Verdict::Ok
        },
        detail: format!(
            "{} usable: {}",
            cpus.len(),
            cpus.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    });
    checks
}

fn ring_checks(features: &RingFeatures, checks: &mut Vec<Check>) {
    let required = |result: &Result<(), String>, fix: &str| match result {
        Ok(()) => (Verdict::Ok, "yes".to_string()),
        Err(why) => (Verdict::Fail, format!("{why}; {fix}")),
    };
    checks.push(Check {
        name: "io_uring",
        verdict: if features.ext_arg {
            Verdict::Ok
        } else {
            Verdict::Fail
        },
        detail: if features.ext_arg {
            "available".into()
        } else {
            "no IORING_FEAT_EXT_ARG; needs Linux 5.11+".into()
        },
    });
    let flags = features.setup.names();
    checks.push(Check {
        name: "ring setup flags",
        verdict: if features.setup.defer_taskrun { Verdict::Ok } else { Verdict::Warn },
        detail: if features.setup.defer_taskrun {
            flags.join(" ")
        } else {
            format!(
                "{} (no DEFER_TASKRUN: completions interrupt the executor; Linux 6.1+ batches them)",
                if flags.is_empty() { "none".to_string() } else { flags.join(" ") }
            )
        },
    });
    for (name, result, fix) in [
        ("buffer rings", &features.buffer_rings, "needs Linux 5.19+"),
        (
            "multishot accept",
            &features.multishot_accept,
            "needs Linux 5.19+",
        ),
        (
            "multishot recv",
            &features.multishot_recv,
            "needs Linux 6.0+",
        ),
    ] {
        let (verdict, detail) = required(result, fix);
        checks.push(Check {
            name,
            verdict,
            detail,
        });
    }
    checks.push(Check {
        name: "SEND_ZC",
        verdict: if features.send_zc {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        detail: if features.send_zc {
            "yes (unused: responses are small; see docs/design.md)".into()
        } else {
            "no (optional; Linux 6.0+)".into()
        },
    });
    checks.push(Check {
        name: "NAPI busy polling",
        verdict: if features.napi.is_ok() {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        detail: match &features.napi {
            Ok(()) => "yes (optional: napi_busy_poll_us; spins only on NIC queues with NAPI, not loopback)".into(),
            Err(why) => format!("no: {why} (optional)"),
        },
    });
}

fn kernel_release() -> String {
    probe::read_proc("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed.
    (unsafe { libc::getrlimit(resource, &mut limit) } == 0)
        .then_some((limit.rlim_cur, limit.rlim_max))
}

fn shown(value: u64, unit: u64, suffix: &str) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{}{suffix}", value / unit)
    }
}

fn memlock_check() -> Check {
    limit_check(LimitCheck {
        name: "memlock limit",
        resource: libc::RLIMIT_MEMLOCK,
        wanted: 8 << 20,
        unit: (1024, " KiB"),
        judge_hard: false,
        fix: "kernels before 5.12 charge rings to it: raise to 8 MiB or more (ulimit -l, LimitMEMLOCK=infinity)",
    })
}

fn open_files_check() -> Check {
    limit_check(LimitCheck {
        name: "open files limit",
        resource: libc::RLIMIT_NOFILE,
        wanted: 65_536,
        unit: (1, ""),
        // `serve` raises the soft limit to the hard one, so the hard one is what counts.
        judge_hard: true,
        fix: "each core's table of connections (max_connections + 1024) must fit under it: raise to 65536 or more (LimitNOFILE, ulimit -Hn)",
    })
}

/// A resource limit to hold against a wanted value.
struct LimitCheck {
    name: &'static str,
    resource: libc::__rlimit_resource_t,
    wanted: u64,
    /// Divisor and suffix the figures are shown with.
    unit: (u64, &'static str),
    /// Judge the hard limit rather than the soft one.
    judge_hard: bool,
    /// What to do when it is too low.
    fix: &'static str,
}

fn limit_check(check: LimitCheck) -> Check {
    let Some((soft, hard)) = rlimit(check.resource) else {
        return Check {
            name: check.name,
            verdict: Verdict::Warn,
            detail: "unreadable".into(),
        };
    };
    let judged = if check.judge_hard { hard } else { soft };
    let verdict = if judged >= check.wanted {
        Verdict::Ok
    } else {
        Verdict::Warn
    };
    let (divisor, suffix) = check.unit;
    let mut detail = format!(
        "{} soft, {} hard",
        shown(soft, divisor, suffix),
        shown(hard, divisor, suffix)
    );
    if verdict != Verdict::Ok {
        let _ = write!(detail, "; {}", check.fix);
    }
    Check {
        name: check.name,
        verdict,
        detail,
    }
}

fn somaxconn_check() -> Check {
    const WANTED: u64 = 4096;
    let value =
        probe::read_proc("/proc/sys/net/core/somaxconn").and_then(|v| v.parse::<u64>().ok());
    match value {
        Some(v) if v >= WANTED => Check {
            name: "net.core.somaxconn",
            verdict: Verdict::Ok,
            detail: v.to_string(),
        },
        Some(v) => Check {
            name: "net.core.somaxconn",
            verdict: Verdict::Warn,
            detail: format!(
                "{v}; caps listen_backlog, so bursts of connects are refused: sysctl -w net.core.somaxconn={WANTED}"
            ),
        },
        None => Check {
            name: "net.core.somaxconn",
            verdict: Verdict::Warn,
            detail: "unreadable".into(),
        },
    }
}

/// The drift report for tuning profile `profile`, and whether the host
/// matches it; an unknown or malformed profile is an error.
pub fn tuning_report(profile: &str) -> Result<(String, bool), String> {
    let settings = crate::host::tuning::load(profile)?;
    let findings = crate::host::tuning::check(&settings, std::path::Path::new("/"));
    let mut out = format!("tuning profile {profile}\n");
    let mut drift = 0;
    for finding in &findings {
        let (verdict, detail) = match (&finding.actual, finding.ok) {
            (None, _) => ("n/a", "nothing to read on this host".to_string()),
            (Some(actual), true) => ("ok", actual.clone()),
            (Some(actual), false) => {
                drift += 1;
                (
                    "DRIFT",
                    format!("expected {}, actual {actual}", finding.expected),
                )
            }
        };
        let _ = writeln!(out, "  {:<44} {:<5} {}", finding.label, verdict, detail);
    }
    let _ = writeln!(
        out,
        "{}; NIC settings: tuning/millrace-tune check {profile} --iface NAME",
        if drift == 0 {
            format!("no drift from {profile}")
        } else {
            format!("{drift} setting(s) drift from {profile}: tuning/millrace-tune apply {profile}")
        }
    );
    Ok((out, drift == 0))
}

/// What a 202 would survive on the Redis Cluster behind `seeds` and, given
/// its URL, on PostgreSQL: the findings of [`crate::host::durability`] as report
/// lines, and whether none is unsafe. A cluster that cannot be reached is
/// itself a failure.
pub fn durability_report(
    seeds: &[std::net::SocketAddr],
    postgres: Option<(&str, Option<&std::path::Path>)>,
    ack_replicas: u32,
) -> (String, bool) {
    use crate::host::durability::{self, Severity};
    let mut out = String::from("durability: what an acknowledged write survives\n");
    let mut findings = Vec::new();
    if !seeds.is_empty() {
        let config =
            crate::redis::cluster::ClusterConfig::new(seeds.to_vec()).credentials_from_env();
        match crate::redis::driver::Client::connect(config) {
            Ok(mut client) => {
                findings.extend(durability::redis_findings(&mut client, Some(ack_replicas)))
            }
            Err(e) => findings.push(durability::Finding {
                subject: "redis".into(),
                severity: Severity::Unsafe,
                text: format!("cannot reach the cluster: {e}"),
            }),
        }
    }
    if let Some((url, ca_file)) = postgres {
        let limit = std::time::Duration::from_secs(10);
        match durability::postgres_findings_blocking(url, ca_file, limit) {
            Ok(more) => findings.extend(more),
            Err(e) => findings.push(durability::Finding {
                subject: "postgresql".into(),
                severity: Severity::Unsafe,
                text: format!("cannot reach it: {e}"),
            }),
        }
    }
    for finding in &findings {
        let verdict = match finding.severity {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Unsafe => "FAIL",
        };
        let _ = writeln!(
            out,
            "  {:<26} {:<5} {}",
            finding.subject, verdict, finding.text
        );
    }
    let safe = findings.iter().all(|f| f.severity != Severity::Unsafe);
    out.push_str(if safe {
        "no setting found that loses acknowledged writes on a restart.\n"
    } else {
        "acknowledged writes would not survive a restart here: see FAIL above.\n"
    });
    (out, safe)
}

/// The report as printed, and whether millrace can run here.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut out = String::from("millrace doctor\n");
    for check in checks {
        let verdict = match check.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "  {:<20} {:<5} {}", check.name, verdict, check.detail);
    }
    let runnable = checks.iter().all(|c| c.verdict != Verdict::Fail);
    out.push_str(if runnable {
        "millrace can run on this host.\n"
    } else {
        "millrace cannot run on this host: see FAIL above.\n"
    });
    (out, runnable)
}
