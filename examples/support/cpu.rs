//! CPU time and page faults of this process, shared by the profiling examples
//! (`#[path]`-included).

/// The fields of Linux's `/proc/self/stat` after the command name (which may hold spaces,
/// inside parentheses); empty where there is no such file.
fn stat_fields() -> Vec<String> {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Field `i` of [`stat_fields`] as a number; NaN where there is none.
fn stat_number(fields: &[String], i: usize) -> f64 {
    fields
        .get(i)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// User and system CPU seconds of the whole process so far (every thread, finished ones
/// too); NaN where there is none.
#[allow(dead_code)] // not every example that includes this prints it
pub fn cpu_seconds() -> f64 {
    let (user, system) = user_and_system_seconds();
    user + system
}

/// User and system CPU seconds of the whole process so far, apart ([`cpu_seconds`]).
#[allow(dead_code)] // not every example that includes this prints them apart
pub fn user_and_system_seconds() -> (f64, f64) {
    // utime and stime, in clock ticks (100 a second on Linux).
    let fields = stat_fields();
    (
        stat_number(&fields, 11) / 100.0,
        stat_number(&fields, 12) / 100.0,
    )
}

/// Minor page faults of the whole process so far (pages the kernel had to find and zero);
/// NaN where there is none.
#[allow(dead_code)] // not every example that includes this prints it
pub fn minor_faults() -> f64 {
    stat_number(&stat_fields(), 7)
}
