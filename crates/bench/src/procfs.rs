//! Reading a process's CPU time and memory from `/proc`, for the bench and
//! the load generator (which includes this file as a module of its own).

use anyhow::{Context, Result};

/// Clock ticks per second, the unit of `/proc/PID/stat`'s CPU times.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// User plus system CPU time of a process (`self` or a pid), in clock ticks.
pub fn cpu_ticks(process: &str) -> Result<u64> {
    let path = format!("/proc/{process}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces and parentheses; the fields
    // after its closing parenthesis start with field 3, the state, so utime
    // (field 14) and stime (field 15) are the 12th and 13th.
    let (_, rest) = text
        .rsplit_once(')')
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("{path}: malformed field {}", index + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// A process's resident set (VmRSS) and its peak (VmHWM), in KiB.
pub fn memory_kib(process: &str) -> Result<(u64, u64)> {
    let path = format!("/proc/{process}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let value = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no {key}"))
    };
    Ok((value("VmRSS:")?, value("VmHWM:")?))
}
