//! CPU time of this process, shared by the profiling examples (`#[path]`-included).

/// User and system CPU seconds of the whole process so far (every thread, finished ones
/// too), from Linux's `/proc/self/stat`; NaN where there is none.
#[allow(dead_code)] // not every example that includes this prints it
pub fn cpu_seconds() -> f64 {
    let (user, system) = user_and_system_seconds();
    user + system
}

/// User and system CPU seconds of the whole process so far, apart ([`cpu_seconds`]).
#[allow(dead_code)] // not every example that includes this prints them apart
pub fn user_and_system_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces, inside parentheses): utime
    // and stime are the 12th and 13th of them, in clock ticks (100 a second on Linux).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user / 100.0, system / 100.0),
        _ => (f64::NAN, f64::NAN),
    }
}

/// Minor page faults of the whole process so far (pages the kernel had to find and zero),
/// from `/proc/self/stat`; NaN where there is none.
#[allow(dead_code)] // not every example that includes this prints it
pub fn minor_faults() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // minflt is the 8th field after the command name.
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}
