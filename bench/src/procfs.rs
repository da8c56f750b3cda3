//! CPU time and resident memory from `/proc`, and what the machine is.
//!
//! CPU time is utime + stime in clock ticks (`/proc/PID/stat` fields 14
//! and 15), all threads of a process together; for the benchmark's own
//! runtimes it is summed over the threads whose name starts with a prefix
//! (`/proc/self/task/TID/stat`), so the load generator and the fake
//! upstreams, which share this process, are accounted apart.

use std::fs;
use std::process::Command;

use serde::Serialize;

/// Parses a `/proc/.../stat` line: the command name and utime + stime.
/// The name is in parentheses and may itself contain spaces and `)`, so
/// the fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Option<(&str, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Parses `VmRSS:` out of `/proc/PID/status`, in KiB.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU ticks used so far by process `pid` (all its threads).
pub fn process_ticks(pid: u32) -> Option<u64> {
    let line = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&line).map(|(_, t)| t)
}

/// CPU ticks used so far by this process's threads named `prefix...`.
pub fn own_thread_ticks(prefix: &str) -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|line| {
            parse_stat(&line).and_then(|(comm, t)| comm.starts_with(prefix).then_some(t))
        })
        .sum()
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_rss_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Open file descriptors of process `pid` (sockets included).
pub fn open_fds(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if unknown).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether this process runs as root (real uid 0).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The soft and hard `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut v = line["Max open files".len()..].split_whitespace();
    let soft = v.next()?.parse().ok()?;
    let hard = v.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Raises this process's open-file limit to `want` (children inherit it).
/// `prlimit` from util-linux does it, so the benchmark needs no unsafe
/// `setrlimit` call; without root only the soft limit can go up to the hard.
pub fn raise_open_files(want: u64) -> Option<(u64, u64)> {
    let (soft, hard) = open_files_limit()?;
    if soft >= want {
        return Some((soft, hard));
    }
    let pid = std::process::id().to_string();
    let both = format!("--nofile={want}:{}", want.max(hard));
    // Without CAP_SYS_RESOURCE (some containers, even as root) the hard
    // limit cannot go up: then raise the soft limit as far as it can.
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &both])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let soft_only = format!("--nofile={}:{hard}", want.min(hard));
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &soft_only])
            .status();
    }
    open_files_limit()
}

/// What the machine is, for the record.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|kib| kib / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        Self {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2385 0 0 0 \
                    1500 250 0 0 20 0 5 0 12345 1234567 890 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("tokio (rt) x", 1750)));
        let plain = "1 (bench-load) R 0 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat(plain), Some(("bench-load", 10)));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn rss_in_kib() {
        let status = "Name:\tpostern\nVmPeak:\t  100 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tzombie\n"), None);
    }

    #[test]
    fn open_files_line() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95549                95549                processes \n\
                      Max open files            20000                65536                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some((20000, 65536)));
    }

    #[test]
    fn this_process_is_readable() {
        let pid = std::process::id();
        assert!(process_ticks(pid).is_some());
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(open_files_limit().is_some());
        assert!(open_fds(pid).is_some_and(|n| n > 0));
    }
}
