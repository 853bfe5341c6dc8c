//! What the proxy under test spends, read from /proc: CPU time (utime + stime,
//! dead threads included) and resident memory, summed over its processes.

use std::io;
use std::time::Duration;

/// USER_HZ, the unit of utime/stime in /proc/PID/stat: fixed at 100 by the
/// Linux ABI on every architecture this runs on.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time used so far by all of `pids`.
pub fn cpu(pids: &[u32]) -> io::Result<Duration> {
    let mut ticks = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Field 2 (comm) may hold spaces and parentheses: count from the last ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| io::Error::other("odd /proc/PID/stat"))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After comm: state is field 3, so utime (14) and stime (15) are at 11 and 12.
        for index in [11, 12] {
            let value = fields
                .get(index)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| io::Error::other("no utime/stime in /proc/PID/stat"))?;
            ticks += value;
        }
    }
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Resident set size (VmRSS) of all of `pids`, in KiB.
pub fn rss_kib(pids: &[u32]) -> io::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))?;
        total += kib;
    }
    Ok(total)
}

/// The CPU time of this process (the load generator), for context.
pub fn own_cpu() -> io::Result<Duration> {
    cpu(&[std::process::id()])
}

/// CPU time the whole machine spent busy so far (every CPU; all of
/// /proc/stat's first line but idle and iowait).
pub fn machine_busy() -> io::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    let mut ticks = 0;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    for (index, field) in line.split_whitespace().skip(1).take(8).enumerate() {
        let value: u64 = field
            .parse()
            .map_err(|_| io::Error::other("odd /proc/stat"))?;
        if index != 3 && index != 4 {
            ticks += value;
        }
    }
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}
