//! tuning/millrace-tune on fake root trees: check, dry run, apply, a second
//! apply, revert, raise-only, missing parts, bad input. Nothing here touches
//! the host's settings.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fake host: /proc/sys, /sys, /etc and the NIC's ethtool state under a
/// temporary directory.
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let dir = std::env::temp_dir().join(format!("millrace-tune-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Tree { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn put(&self, path: &str, content: &str) {
        let path = self.root().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn get(&self, path: &str) -> String {
        fs::read_to_string(self.root().join(path)).unwrap()
    }

    /// A host with every part the profiles cover: 4 CPUs with cpufreq,
    /// irqbalance, and eth0 with two queues and two interrupts.
    fn full(name: &str) -> Tree {
        let tree = Tree::new(name);
        for (sysctl, value) in [
            ("net/core/somaxconn", "4096"),
            ("net/ipv4/tcp_max_syn_backlog", "2048"),
            ("net/core/netdev_max_backlog", "1000"),
            ("net/core/busy_read", "0"),
            ("net/core/busy_poll", "0"),
            ("net/core/rps_sock_flow_entries", "32768"),
            ("net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
            ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
            ("net/ipv4/tcp_fastopen", "1"),
            ("net/ipv4/tcp_tw_reuse", "2"),
            ("net/ipv4/ip_local_port_range", "32768\t60999"),
            ("fs/nr_open", "1048576"),
            ("fs/file-max", "9223372036854775807"),
            ("vm/swappiness", "60"),
        ] {
            tree.put(&format!("proc/sys/{sysctl}"), &format!("{value}\n"));
        }
        tree.put(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        );
        tree.put("sys/devices/system/cpu/online", "0-3\n");
        for cpu in 0..4 {
            tree.put(
                &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"),
                "powersave\n",
            );
        }
        tree.put("etc/default/irqbalance", "ENABLED=1\nONESHOT=0\n");
        for queue in 0..2 {
            tree.put(
                &format!("sys/class/net/eth0/queues/rx-{queue}/rps_cpus"),
                "0000000f\n",
            );
            tree.put(
                &format!("sys/class/net/eth0/queues/rx-{queue}/rps_flow_cnt"),
                "4096\n",
            );
            tree.put(
                &format!("sys/class/net/eth0/queues/tx-{queue}/xps_cpus"),
                "3\n",
            );
        }
        tree.put(
            "proc/interrupts",
            "           CPU0       CPU1\n  40:       10         20   PCI-MSI  eth0-TxRx-0\n  41:        1          2   PCI-MSI  eth0-TxRx-1\n  50:        5          5   PCI-MSI  nvme0q0\n",
        );
        for irq in [40, 41, 50] {
            tree.put(&format!("proc/irq/{irq}/smp_affinity_list"), "0-3\n");
        }
        tree.put("ethtool/eth0", "adaptive-rx on\ncombined 8\nrx-usecs 50\n");
        tree
    }

    fn tune(&self, args: &[&str]) -> Output {
        let root = self.root();
        let mut command = Command::new(script());
        command
            .args(args)
            .arg("--root")
            .arg(&root)
            .arg("--backup")
            .arg(self.dir.join("backup"))
            .env("ETHTOOL", fixture("fake-ethtool"))
            .env("FAKE_ETHTOOL_STATE", root.join("ethtool/eth0"));
        command.output().unwrap()
    }

    /// Every file under the root and its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, base: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, files);
                } else {
                    let bytes = fs::read(&path).unwrap();
                    files.insert(path.strip_prefix(base).unwrap().to_path_buf(), bytes);
                }
            }
        }
        let mut files = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut files);
        files
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/millrace-tune")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tuning")
        .join(name)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const NIC: [&str; 4] = ["--iface", "eth0", "--cores", "2,3"];

#[test]
fn check_reports_drift_and_a_dry_run_changes_nothing() {
    let tree = Tree::full("dry");
    let before = tree.snapshot();
    let check = tree.tune(&[&["check", "latency"][..], &NIC].concat());
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let out = text(&check);
    assert!(out.contains("DRIFT    sysctl net.core.somaxconn"), "{out}");
    assert!(out.contains("expected 65535 or more, actual 4096"), "{out}");
    assert!(
        out.contains("ok       sysctl fs.file-max"),
        "higher is fine: {out}"
    );

    let dry = tree.tune(&[&["apply", "latency", "--dry-run"][..], &NIC].concat());
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let out = text(&dry);
    assert!(out.contains("would    sysctl net.core.somaxconn"), "{out}");
    assert!(out.contains("4096 -> 65535"), "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        out.contains("isolcpus=2,3 nohz_full=2,3 rcu_nocbs=2,3"),
        "the kernel command line is printed: {out}"
    );
    assert_eq!(tree.snapshot(), before, "a dry run changes nothing");
    assert!(!tree.dir.join("backup").exists());
}

#[test]
fn apply_then_check_passes_a_second_apply_changes_nothing_and_revert_restores_every_byte() {
    let tree = Tree::full("cycle");
    let before = tree.snapshot();
    let apply = tree.tune(&[&["apply", "latency"][..], &NIC].concat());
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));

    assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "65535\n");
    assert_eq!(
        tree.get("proc/sys/net/ipv4/tcp_rmem"),
        "4096 131072 16777216\n"
    );
    assert_eq!(
        tree.get("sys/kernel/mm/transparent_hugepage/enabled"),
        "always [madvise] never\n"
    );
    assert_eq!(
        tree.get("sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"),
        "performance\n"
    );
    assert_eq!(tree.get("sys/class/net/eth0/queues/rx-1/rps_cpus"), "0\n");
    assert_eq!(
        tree.get("sys/class/net/eth0/queues/rx-0/rps_flow_cnt"),
        "0\n"
    );
    assert_eq!(tree.get("proc/sys/net/core/rps_sock_flow_entries"), "0\n");
    assert_eq!(tree.get("proc/irq/40/smp_affinity_list"), "2\n");
    assert_eq!(tree.get("proc/irq/41/smp_affinity_list"), "3\n");
    assert_eq!(
        tree.get("proc/irq/50/smp_affinity_list"),
        "0-3\n",
        "other devices' interrupts are left alone"
    );
    assert_eq!(
        tree.get("ethtool/eth0"),
        "adaptive-rx off\ncombined 2\nrx-usecs 0\n"
    );
    assert!(
        tree.get("etc/default/irqbalance")
            .contains("IRQBALANCE_BANNED_CPULIST=2,3")
    );
    let limits = tree.get("etc/security/limits.d/90-millrace.conf");
    assert!(limits.contains("* hard memlock unlimited"), "{limits}");
    assert!(limits.contains("* soft nofile 1048576"), "{limits}");

    let check = tree.tune(&[&["check", "latency"][..], &NIC].concat());
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(text(&check).contains("no drift"));

    let applied = tree.snapshot();
    let again = tree.tune(&[&["apply", "latency"][..], &NIC].concat());
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("0 change(s) made"),
        "{}",
        text(&again)
    );
    assert_eq!(tree.snapshot(), applied, "a second apply changes nothing");

    let revert = tree.tune(&["revert"]);
    assert_eq!(revert.status.code(), Some(0), "{}", text(&revert));
    assert_eq!(
        tree.snapshot(),
        before,
        "revert restores the tree byte for byte"
    );
    assert!(!tree.dir.join("backup").exists());
    let again = tree.tune(&["revert"]);
    assert_eq!(again.status.code(), Some(2), "nothing left to revert");
}

#[test]
fn a_value_already_higher_is_left_alone() {
    let tree = Tree::full("raise");
    tree.put("proc/sys/net/core/somaxconn", "200000\n");
    // Above in the first and last numbers, below in the middle one.
    tree.put("proc/sys/net/ipv4/tcp_wmem", "8192\t16384\t67108864\n");
    let apply = tree.tune(&["apply", "throughput"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "200000\n");
    assert_eq!(
        tree.get("proc/sys/net/ipv4/tcp_wmem"),
        "8192 262144 67108864\n"
    );
    // A "set" value is set either way, up or down.
    assert_eq!(tree.get("proc/sys/vm/swappiness"), "10\n");
}

#[test]
fn missing_parts_are_reported_and_skipped() {
    let tree = Tree::new("missing");
    tree.put("proc/sys/net/core/somaxconn", "4096\n");
    tree.put("sys/devices/system/cpu/online", "0-1\n");
    let apply = tree.tune(&["apply", "latency"]);
    let out = text(&apply);
    assert_eq!(apply.status.code(), Some(0), "{out}");
    assert!(out.contains("skipped  governor: no cpufreq"), "{out}");
    assert!(out.contains("skipped  sysctl vm.swappiness"), "{out}");
    assert!(
        out.contains("skipped  nic rps-cpus: no --iface given"),
        "{out}"
    );
    assert!(out.contains("skipped  irqbalance: not installed"), "{out}");
    assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "65535\n");
    let check = tree.tune(&["check", "latency"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let tree = Tree::full("bad");
    let before = tree.snapshot();
    let unknown = tree.tune(&["apply", "fastest"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown).contains("unknown profile: fastest (known: latency throughput)"),
        "{}",
        text(&unknown)
    );

    let profile = tree.dir.join("broken.conf");
    fs::write(
        &profile,
        "sysctl net.core.somaxconn 65535 raise  # fine\nsysctl vm.swappiness\n",
    )
    .unwrap();
    let malformed = tree.tune(&["apply", profile.to_str().unwrap()]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        text(&malformed).contains("broken.conf:2: expected KIND NAME VALUE"),
        "{}",
        text(&malformed)
    );
    fs::write(&profile, "frobnicate x 1\n").unwrap();
    let kind = tree.tune(&["check", profile.to_str().unwrap()]);
    assert_eq!(kind.status.code(), Some(2));
    assert!(
        text(&kind).contains("unknown kind: frobnicate"),
        "{}",
        text(&kind)
    );

    let no_iface = tree.tune(&["apply", "latency", "--iface", "eth9"]);
    assert_eq!(no_iface.status.code(), Some(2));
    assert!(
        text(&no_iface).contains("no interface eth9"),
        "{}",
        text(&no_iface)
    );
    let bad_cores = tree.tune(&["apply", "latency", "--cores", "3-1"]);
    assert_eq!(bad_cores.status.code(), Some(2));
    assert_eq!(tree.snapshot(), before, "nothing changed by any of them");
}

#[test]
fn changing_the_host_needs_root_but_checking_does_not() {
    // As nobody: apply and revert refuse without --root; check and a dry
    // run only read.
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(script())
            .args(args)
            .output()
            .unwrap()
    };
    let apply = as_nobody(&["apply", "latency"]);
    assert_eq!(apply.status.code(), Some(2), "{}", text(&apply));
    assert!(text(&apply).contains("run it as root"), "{}", text(&apply));
    let revert = as_nobody(&["revert"]);
    assert_eq!(revert.status.code(), Some(2));
    let dry = as_nobody(&["apply", "latency", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let check = as_nobody(&["check", "throughput"]);
    assert!(
        matches!(check.status.code(), Some(0 | 1)),
        "{}",
        text(&check)
    );
}

#[test]
fn doctor_reads_the_same_profiles() {
    let doctor = |profile: &str| {
        Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["doctor", "--profile", profile])
            .output()
            .unwrap()
    };
    let report = doctor("throughput");
    let out = text(&report);
    assert!(matches!(report.status.code(), Some(0 | 1)), "{out}");
    assert!(out.contains("tuning profile throughput"), "{out}");
    assert!(out.contains("sysctl net.core.somaxconn"), "{out}");
    assert!(out.contains("limit nofile (this process)"), "{out}");
    // Drift in the report and in the exit status agree.
    assert_eq!(
        out.contains("DRIFT"),
        report.status.code() == Some(1),
        "{out}"
    );
    let unknown = doctor("fastest");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown).contains("unknown profile: fastest"));
}

#[test]
fn the_systemd_units_verify() {
    // The units name installed paths; point them at this build to verify.
    let tree = Tree::new("units");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let units = repo.join("tuning/systemd");
    let service = fs::read_to_string(units.join("millrace.service"))
        .unwrap()
        .replace("/usr/local/bin/millrace", env!("CARGO_BIN_EXE_millrace"));
    let tune = fs::read_to_string(units.join("millrace-tune@.service"))
        .unwrap()
        .replace(
            "/usr/local/lib/millrace/millrace-tune",
            script().to_str().unwrap(),
        );
    fs::write(tree.dir.join("millrace.service"), service).unwrap();
    let writeback = fs::read_to_string(units.join("millrace-writeback@.service"))
        .unwrap()
        .replace("/usr/local/bin/millrace", env!("CARGO_BIN_EXE_millrace"));
    fs::write(tree.dir.join("millrace-writeback@.service"), &writeback).unwrap();
    fs::write(tree.dir.join("millrace-writeback@db-1.service"), &writeback).unwrap();
    fs::write(tree.dir.join("millrace-tune@.service"), &tune).unwrap();
    fs::write(tree.dir.join("millrace-tune@latency.service"), &tune).unwrap();
    let verify = Command::new("systemd-analyze")
        .current_dir(&tree.dir)
        .args([
            "verify",
            "./millrace.service",
            "./millrace-tune@latency.service",
            "./millrace-writeback@db-1.service",
        ])
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    assert!(verify.status.success(), "{}", text(&verify));
    assert_eq!(text(&verify).trim(), "", "verify is clean");
}
