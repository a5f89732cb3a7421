//! CPU time and memory of processes on this machine: the tester's own (getrusage) and the
//! gateway's (`/proc/PID/stat`, `/proc/PID/status`), and the open-file limit.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now, ns since the Unix epoch (the clock the gateway's `ts` uses).
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// User + system CPU seconds this process has used.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage owned by this frame.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU seconds of process `pid` (fields 14 and 15 of `/proc/PID/stat`).
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

/// Seconds the threads of process `pid` spent runnable but waiting for a CPU (the second field
/// of `/proc/PID/task/*/schedstat`, summed). A figure measured while this grows fast was
/// measured on a machine busy with something else.
pub fn pid_run_queue_wait_seconds(pid: u32) -> Option<f64> {
    let mut total_ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(wait) = stat.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
            total_ns += wait;
        }
    }
    Some(total_ns as f64 / 1e9)
}

/// Jiffies one core spent busy (user, nice, system, irq, softirq), stolen by the hypervisor,
/// and in all, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreTimes {
    pub busy: u64,
    pub steal: u64,
    pub total: u64,
}

/// Every core's times (`cpu0`, `cpu1`, … lines of `/proc/stat`), in core order.
pub fn core_times() -> Vec<CoreTimes> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal (guest time is inside user)
            CoreTimes {
                busy: at(0) + at(1) + at(2) + at(5) + at(6),
                steal: at(7),
                total: (0..8).map(at).sum(),
            }
        })
        .collect()
}

/// Resident set size of process `pid`, KiB (`VmRSS` in `/proc/PID/status`).
pub fn pid_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// Raises this process's soft open-file limit to its hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct they are given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        assert!(pid_rss_kib(pid).unwrap() > 0);
        assert!(pid_cpu_seconds(pid).is_some());
        assert!(pid_run_queue_wait_seconds(pid).is_some());
        let cores = core_times();
        assert!(!cores.is_empty());
        assert!(cores.iter().all(|c| c.busy + c.steal <= c.total));
        assert!(self_cpu_seconds() >= 0.0);
        assert!(raise_fd_limit() >= 256);
        assert!(pid_cpu_seconds(u32::MAX).is_none());
    }
}
