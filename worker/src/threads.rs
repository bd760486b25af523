//! libtorch's thread pools sized from the CPUs this process may use.
//!
//! In a pod the host's core count (what libtorch uses by default) can be
//! 64 while the cgroup allows 4 CPUs; 64 threads on 4 CPUs thrash. The
//! quota is read from cgroup v2 (`/sys/fs/cgroup/cpu.max`) or v1
//! (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), bounded by the affinity mask.

use std::path::Path;

/// CPUs allowed by a cgroup v2 `cpu.max` text (`"max 100000"` or
/// `"400000 100000"`), rounded up; `None` when unlimited or unreadable.
pub fn quota_from_cpu_max(text: &str) -> Option<usize> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| (quota / period).ceil().max(1.0) as usize)
}

/// CPUs allowed by cgroup v1 quota and period texts; `None` when unlimited.
pub fn quota_from_v1(quota: &str, period: &str) -> Option<usize> {
    let q: i64 = quota.trim().parse().ok()?;
    let p: i64 = period.trim().parse().ok()?;
    (q > 0 && p > 0).then(|| ((q as f64 / p as f64).ceil() as usize).max(1))
}

/// The CPU quota of this process's cgroup, if one is set.
pub fn cgroup_cpus(root: &Path) -> Option<usize> {
    if let Ok(t) = std::fs::read_to_string(root.join("cpu.max")) {
        return quota_from_cpu_max(&t);
    }
    let q = std::fs::read_to_string(root.join("cpu/cpu.cfs_quota_us")).ok()?;
    let p = std::fs::read_to_string(root.join("cpu/cpu.cfs_period_us")).ok()?;
    quota_from_v1(&q, &p)
}

/// The CPUs this process may use: the affinity mask, bounded by the cgroup
/// quota.
pub fn available_cpus() -> usize {
    let affinity = std::thread::available_parallelism().map_or(1, |n| n.get());
    match cgroup_cpus(Path::new("/sys/fs/cgroup")) {
        Some(q) => q.min(affinity),
        None => affinity,
    }
}

/// Sets libtorch's intra-op threads to `threads` (or [`available_cpus`]
/// when `None`) and returns the number set.
pub fn configure(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(available_cpus).max(1);
    tch::set_num_threads(n as i32);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_read_from_cgroup_v2_and_v1_texts() {
        assert_eq!(quota_from_cpu_max("max 100000\n"), None);
        assert_eq!(quota_from_cpu_max("400000 100000\n"), Some(4));
        assert_eq!(quota_from_cpu_max("150000 100000"), Some(2));
        assert_eq!(quota_from_cpu_max("50000 100000"), Some(1));
        assert_eq!(quota_from_cpu_max("garbage"), None);
        assert_eq!(quota_from_v1("-1", "100000"), None);
        assert_eq!(quota_from_v1("200000\n", "100000\n"), Some(2));
    }

    #[test]
    fn a_cgroup_folder_is_read_v2_first() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_cpus(dir.path()), None);
        std::fs::create_dir(dir.path().join("cpu")).unwrap();
        std::fs::write(dir.path().join("cpu/cpu.cfs_quota_us"), "300000").unwrap();
        std::fs::write(dir.path().join("cpu/cpu.cfs_period_us"), "100000").unwrap();
        assert_eq!(cgroup_cpus(dir.path()), Some(3));
        std::fs::write(dir.path().join("cpu.max"), "100000 100000").unwrap();
        assert_eq!(cgroup_cpus(dir.path()), Some(1));
        assert!(available_cpus() >= 1);
    }
}
