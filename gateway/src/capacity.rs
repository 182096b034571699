//! How much the gateway holds at once, derived from the memory it may use.
//!
//! A gateway killed for memory loses the usage rows still queued in it, so
//! its memory is bounded by design rather than by luck: the container's
//! memory limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`, or
//! `--memory-limit`) is split into budgets, each enforced where the memory
//! is taken:
//!
//! | budget | share of the limit | unit cost | at 256 MiB |
//! |---|---|---|---|
//! | requests in flight | 1/4 | 64 KiB (measured: a request with its client and upstream connections) | 1,024 |
//! | request bodies being held | 1/8 | 4 bytes a body byte (the bytes, the parsed JSON, the forwarded copy) | 32 MiB (8 MiB of raw bodies) |
//! | open client connections | 1/16 | 32 KiB (measured at ten times capacity: 512 busy connections and 128 shed, with the rest, peaked at 49% of 256 MiB; 1,024 and 256 at 74%) | 512 |
//! | the usage/audit queue | 1/32 | 1 KiB a record (the overflow goes to the spill file) | 8,192 |
//!
//! The nominal costs add up to 15/32 of the limit: with the process's own
//! 30-odd MiB, under 60% of 256 MiB with every budget full. Measured at ten
//! times capacity (`make bench-gateway`'s overload phase), peak RSS was 33-36%
//! of 256 MiB with a CI run beside it; 70-84% while the recorder still kept its
//! batch INSERTs prepared (storage/write.rs). Past a budget, requests get 503 with `Retry-After`
//! at once instead of queueing; past the connection cap, connections wait in
//! the kernel's accept queue. Without a limit (none set, or `max`) the
//! defaults below apply and bodies are not budgeted.

use std::path::{Path, PathBuf};

/// What the gateway may hold at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The memory limit the budgets come from, and where it was read.
    pub memory_limit: Option<(u64, MemorySource)>,
    /// API requests handled at once (until response headers).
    pub max_in_flight: usize,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Bytes of request bodies (charged [`BODY_COST`] each) held at once; `None`: unbudgeted.
    pub body_budget: Option<usize>,
    /// Usage/audit records queued before the overflow is spilled to disk.
    pub recorder_queue: usize,
}

/// Where the memory limit came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// `--memory-limit`.
    Flag,
    /// A cgroup file.
    Cgroup(PathBuf),
}

/// Memory a request body costs per byte while its request is handled: the
/// bytes received, the JSON parsed from them, and the body sent upstream.
pub const BODY_COST: usize = 4;
const IN_FLIGHT_COST: u64 = 64 * 1024;
const CONNECTION_COST: u64 = 32 * 1024;
const RECORD_COST: u64 = 1024;

/// Without a memory limit: the in-flight and connection caps.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Without a memory limit: open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Without a memory limit: queued usage/audit records.
pub const DEFAULT_RECORDER_QUEUE: usize = 65_536;

impl Capacity {
    /// The budgets for `memory_limit`; `max_in_flight` and `max_connections`
    /// override what the limit gives.
    pub fn derive(
        memory_limit: Option<(u64, MemorySource)>,
        max_in_flight: Option<usize>,
        max_connections: Option<usize>,
    ) -> Self {
        let share = |divisor: u64, cost: u64, floor: usize, ceiling: usize| {
            memory_limit.as_ref().map(|(limit, _)| ((limit / divisor / cost) as usize).clamp(floor, ceiling))
        };
        Self {
            max_in_flight: max_in_flight
                .or_else(|| share(4, IN_FLIGHT_COST, 16, 16_384))
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT)
                .max(1),
            max_connections: max_connections
                .or_else(|| share(16, CONNECTION_COST, 64, 65_536))
                .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                .max(1),
            body_budget: memory_limit.as_ref().map(|(limit, _)| (limit / 8) as usize),
            recorder_queue: share(32, RECORD_COST, 1024, DEFAULT_RECORDER_QUEUE).unwrap_or(DEFAULT_RECORDER_QUEUE),
            memory_limit,
        }
    }
}

/// The memory limit of this process's cgroup, if it has one.
pub fn cgroup_memory_limit() -> Option<(u64, PathBuf)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    memory_limit_in(Path::new("/sys/fs/cgroup"), &own)
}

/// The memory limit for the cgroup memberships `own` (the text of
/// `/proc/self/cgroup`) under the cgroup mount `root`: v2's `memory.max`, else
/// v1's `memory.limit_in_bytes`, of the process's cgroup, else of the mount's
/// root (inside a container's cgroup namespace, or a v1 mount of the
/// container's own cgroup, the path in `/proc/self/cgroup` is not below it).
fn memory_limit_in(root: &Path, own: &str) -> Option<(u64, PathBuf)> {
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(relative).join("memory.max"));
            candidates.push(root.join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("memory").join(relative).join("memory.limit_in_bytes"));
            candidates.push(root.join("memory/memory.limit_in_bytes"));
        }
    }
    candidates.into_iter().find_map(|file| {
        let text = std::fs::read_to_string(&file).ok()?;
        parse_limit(text.trim()).map(|limit| (limit, file))
    })
}

/// A cgroup limit: bytes, or none for `max` (v2) and v1's "unlimited"
/// (a page-aligned `i64::MAX`, or anything no machine has).
fn parse_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.parse().ok()?;
    (bytes > 0 && bytes < 1 << 50).then_some(bytes)
}

/// Parses `--memory-limit`: bytes, or a Kubernetes-style quantity (`256Mi`, `1Gi`, `512M`).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?}: use bytes, Ki, Mi, Gi, Ti, k, M or G")),
    };
    let number: u64 =
        number.parse().map_err(|_| format!("{text:?} is not a number of bytes (e.g. 268435456 or 256Mi)"))?;
    match number.checked_mul(multiplier) {
        Some(0) | None => Err(format!("{text:?} is not a usable memory limit")),
        Some(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn cgroup_fs(files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("tg-cgroup-{}-{}", std::process::id(), rand_suffix()));
        for (path, content) in files {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, content).expect("write");
        }
        root
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn a_256_mib_container_gets_budgets_that_stay_under_60_percent_when_full() {
        let c = Capacity::derive(Some((256 * MIB, MemorySource::Flag)), None, None);
        assert_eq!((c.max_in_flight, c.max_connections, c.recorder_queue), (1024, 512, 8192));
        assert_eq!(c.body_budget, Some(32 * MIB as usize));
        let full = c.max_in_flight as u64 * IN_FLIGHT_COST
            + c.body_budget.expect("budget") as u64
            + c.max_connections as u64 * CONNECTION_COST
            + c.recorder_queue as u64 * RECORD_COST;
        assert!(full + 30 * MIB < 256 * MIB * 6 / 10, "{} MiB", full / MIB);
    }

    #[test]
    fn flags_override_the_limit_and_no_limit_keeps_the_defaults() {
        let c = Capacity::derive(Some((256 * MIB, MemorySource::Flag)), Some(7), Some(9));
        assert_eq!((c.max_in_flight, c.max_connections), (7, 9));
        let c = Capacity::derive(None, None, None);
        assert_eq!((c.max_in_flight, c.max_connections), (DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_CONNECTIONS));
        assert_eq!((c.body_budget, c.recorder_queue), (None, DEFAULT_RECORDER_QUEUE));
        let tiny = Capacity::derive(Some((4 * MIB, MemorySource::Flag)), None, None);
        assert_eq!((tiny.max_in_flight, tiny.max_connections, tiny.recorder_queue), (16, 64, 1024));
    }

    #[test]
    fn the_limit_is_read_from_cgroup_v2_and_v1_and_unlimited_is_none() {
        let v2 = cgroup_fs(&[("kubepods/pod1/c1/memory.max", "268435456\n")]);
        let found = memory_limit_in(&v2, "0::/kubepods/pod1/c1\n").expect("v2 limit");
        assert_eq!(found, (256 * MIB, v2.join("kubepods/pod1/c1/memory.max")));

        // A cgroup namespace: the path is "/", the container's files are at the mount's root.
        let ns = cgroup_fs(&[("memory.max", "max\n")]);
        assert_eq!(memory_limit_in(&ns, "0::/\n"), None, "max is no limit");

        let v1 = cgroup_fs(&[("memory/memory.limit_in_bytes", "536870912\n")]);
        let own = "12:pids:/kubepods/x\n4:cpu,cpuacct:/kubepods/x\n3:memory:/kubepods/burstable/pod2/c2\n";
        assert_eq!(memory_limit_in(&v1, own), Some((512 * MIB, v1.join("memory/memory.limit_in_bytes"))));

        let unlimited = cgroup_fs(&[("memory/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(memory_limit_in(&unlimited, "3:memory:/\n"), None);
        for root in [v2, ns, v1, unlimited] {
            let _ = std::fs::remove_dir_all(root);
        }
    }

    #[test]
    fn memory_flags_take_bytes_and_quantities_and_name_what_is_wrong() {
        assert_eq!(parse_memory("268435456"), Ok(256 * MIB));
        assert_eq!(parse_memory("256Mi"), Ok(256 * MIB));
        assert_eq!(parse_memory("1Gi"), Ok(1024 * MIB));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        assert!(parse_memory("256MB").expect_err("unit").contains("unknown unit \"MB\""));
        assert!(parse_memory("Mi").expect_err("no number").contains("not a number"));
        assert!(parse_memory("0").is_err());
    }
}
