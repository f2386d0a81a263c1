//! The tuning profiles of `tuning/profiles/`, read for `millrace doctor
//! --profile`: the host-wide settings (sysctls, sysfs, the CPU governor)
//! compared with what this host has, as `tuning/millrace-tune check` does.
//! Limits are compared with this process's own; NIC settings need an
//! interface and are left to the script.

use std::path::Path;

/// The profiles shipped with millrace, by name.
pub const PROFILES: [(&str, &str); 2] = [
    (
        "latency",
        include_str!("../../tuning/profiles/latency.conf"),
    ),
    (
        "throughput",
        include_str!("../../tuning/profiles/throughput.conf"),
    ),
];

/// One line of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// `sysctl`, `sysfs`, `governor`, `limit`, `irqbalance`, `nic` or `cmdline`.
    pub kind: String,
    /// What it sets.
    pub name: String,
    /// The value, quotes removed.
    pub value: String,
    /// Never lower a value already higher.
    pub raise: bool,
}

const KINDS: [&str; 7] = [
    "sysctl",
    "sysfs",
    "governor",
    "limit",
    "irqbalance",
    "nic",
    "cmdline",
];

/// A profile by name, or the text of the file at that path.
pub fn load(profile: &str) -> Result<Vec<Setting>, String> {
    let text = match PROFILES.iter().find(|(name, _)| *name == profile) {
        Some((_, text)) => (*text).to_string(),
        None if profile.contains('/') || profile.ends_with(".conf") => {
            std::fs::read_to_string(profile)
                .map_err(|e| format!("cannot read profile {profile}: {e}"))?
        }
        None => {
            let known: Vec<&str> = PROFILES.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "unknown profile: {profile} (known: {})",
                known.join(" ")
            ));
        }
    };
    parse(&text).map_err(|e| format!("{profile}: {e}"))
}

/// Parse a profile: `KIND NAME VALUE [raise]   # why` per line.
pub fn parse(text: &str) -> Result<Vec<Setting>, String> {
    let mut settings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let body = line.split('#').next().unwrap_or_default().trim();
        if body.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line}", number + 1);
        let mut words = body.splitn(3, char::is_whitespace);
        let (Some(kind), Some(name), Some(rest)) = (words.next(), words.next(), words.next())
        else {
            return Err(bad("expected KIND NAME VALUE"));
        };
        if !KINDS.contains(&kind) {
            return Err(bad("unknown kind"));
        }
        let rest = rest.trim();
        let (value, raise) = match rest.strip_suffix(" raise") {
            Some(value) => (value.trim(), true),
            None => (rest, false),
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.is_empty() || value.contains('"') {
            return Err(bad("expected KIND NAME VALUE"));
        }
        settings.push(Setting {
            kind: kind.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            raise,
        });
    }
    if settings.is_empty() {
        return Err("no settings".into());
    }
    Ok(settings)
}

/// One setting as found on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was compared, such as `sysctl net.core.somaxconn`.
    pub label: String,
    /// What the profile asks for (`or more` for raise-only values).
    pub expected: String,
    /// What the host has; `None` when there is nothing to read.
    pub actual: Option<String>,
    /// The host satisfies the profile here.
    pub ok: bool,
}

/// Compare the host-wide settings with the files under `root` (`/` for
/// this host). Settings with nothing to read (no cpufreq, say) come back
/// with `actual: None` and count as not applicable, not as drift.
pub fn check(settings: &[Setting], root: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    for setting in settings {
        match setting.kind.as_str() {
            "sysctl" => {
                let path = root.join("proc/sys").join(setting.name.replace('.', "/"));
                findings.push(compare(
                    format!("sysctl {}", setting.name),
                    setting,
                    read(&path),
                ));
            }
            "sysfs" => {
                let path = root.join("sys").join(&setting.name);
                findings.push(compare(
                    format!("sysfs {}", setting.name),
                    setting,
                    read(&path),
                ));
            }
            "governor" => {
                let cpus = root.join("sys/devices/system/cpu");
                let mut governors: Vec<(String, String)> = std::fs::read_dir(&cpus)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let number = name.strip_prefix("cpu")?;
                        number.parse::<usize>().ok()?;
                        let governor = read(&entry.path().join("cpufreq/scaling_governor"))?;
                        Some((name, governor))
                    })
                    .collect();
                governors.sort();
                if governors.is_empty() {
                    findings.push(compare("governor".into(), setting, None));
                }
                for (cpu, governor) in governors {
                    findings.push(compare(format!("governor {cpu}"), setting, Some(governor)));
                }
            }
            "limit" => {
                let actual = process_limit(&setting.name);
                findings.push(compare(
                    format!("limit {} (this process)", setting.name),
                    setting,
                    actual,
                ));
            }
            // NIC settings need an interface, irqbalance and the kernel
            // command line are not this process's to see: the script
            // checks the first two, the last is only printed.
            _ => {}
        }
    }
    findings
}

fn read(path: &Path) -> Option<String> {
    let content = std::fs::read_to_string(path).ok()?;
    // A choice file ("always [madvise] never"): the bracketed choice.
    if let (Some(open), Some(close)) = (content.find('['), content.find(']'))
        && open < close
    {
        return Some(content[open + 1..close].to_string());
    }
    Some(content.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn compare(label: String, setting: &Setting, actual: Option<String>) -> Finding {
    let expected = setting
        .value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let ok = match &actual {
        None => true,
        Some(actual) if setting.raise => {
            let wanted: Vec<&str> = expected.split(' ').collect();
            let found: Vec<&str> = actual.split(' ').collect();
            wanted.len() == found.len()
                && wanted.iter().zip(&found).all(|(w, f)| {
                    matches!((w.parse::<u64>(), f.parse::<u64>()), (Ok(w), Ok(f)) if f >= w)
                })
        }
        Some(actual) => {
            *actual == expected
                || (expected == "unlimited" && actual == "unlimited")
                || matches!((expected.parse::<u64>(), actual.parse::<u64>()), (Ok(w), Ok(f)) if f >= w && setting.kind == "limit")
        }
    };
    Finding {
        label,
        expected: if setting.raise || setting.kind == "limit" {
            format!("{expected} or more")
        } else {
            expected
        },
        actual,
        ok,
    }
}

/// This process's hard limit for `memlock` or `nofile`.
fn process_limit(name: &str) -> Option<String> {
    let resource = match name {
        "memlock" => libc::RLIMIT_MEMLOCK,
        "nofile" => libc::RLIMIT_NOFILE,
        _ => return None,
    };
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    Some(if limit.rlim_max == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        limit.rlim_max.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_profiles_parse() {
        for (name, _) in PROFILES {
            let settings = load(name).unwrap();
            assert!(settings.iter().any(|s| s.kind == "sysctl" && s.raise));
        }
        let latency = load("latency").unwrap();
        let rmem = latency
            .iter()
            .find(|s| s.name == "net.ipv4.tcp_rmem")
            .unwrap();
        assert_eq!(rmem.value, "4096 131072 16777216");
        assert!(rmem.raise);
    }

    #[test]
    fn bad_profiles_are_refused_with_the_line() {
        assert!(load("fastest").unwrap_err().contains("unknown profile"));
        assert!(
            parse("sysctl vm.swappiness\n")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse("frob a 1\n").unwrap_err().contains("unknown kind"));
        assert!(parse("sysctl a \"1 2\n").is_err());
        assert!(parse("# only a comment\n").is_err());
    }

    #[test]
    fn drift_is_found_in_a_tree() {
        let root = std::env::temp_dir().join(format!("millrace-doctor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/sys/net/core")).unwrap();
        std::fs::create_dir_all(root.join("sys/kernel/mm/transparent_hugepage")).unwrap();
        std::fs::write(root.join("proc/sys/net/core/somaxconn"), "70000\n").unwrap();
        std::fs::write(root.join("proc/sys/net/core/busy_read"), "0\n").unwrap();
        std::fs::write(
            root.join("sys/kernel/mm/transparent_hugepage/enabled"),
            "always [madvise] never\n",
        )
        .unwrap();
        let settings = parse(
            "sysctl net.core.somaxconn 65535 raise\nsysctl net.core.busy_read 50\n\
             sysfs kernel/mm/transparent_hugepage/enabled madvise\ngovernor - performance\n",
        )
        .unwrap();
        let findings = check(&settings, &root);
        let verdicts: Vec<(&str, bool)> =
            findings.iter().map(|f| (f.label.as_str(), f.ok)).collect();
        assert_eq!(
            verdicts,
            [
                ("sysctl net.core.somaxconn", true),
                ("sysctl net.core.busy_read", false),
                ("sysfs kernel/mm/transparent_hugepage/enabled", true),
                ("governor", true),
            ]
        );
        assert_eq!(findings[3].actual, None, "no cpufreq: not applicable");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
