//! How many CPUs this process may use: its affinity mask, capped by the CPU quota of its cgroup — what
//! `--loops auto` runs one loop per, and what the Python side sizes its shared thread pool from.
//!
//! A container limited to 2 CPUs on a 64-core node usually still has all 64 cores in its affinity mask:
//! the limit is a CFS bandwidth quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`),
//! so 64 pinned loops would share 2 CPUs of time and be throttled. The budget is
//! `min(affinity, ceil(quota / period))`, at least 1.
//!
//! Rounding up is what the runtimes users compare us with do: Go 1.25's container-aware GOMAXPROCS
//! (`adjustCgroupGOMAXPROCS` in src/runtime/cgroup_linux.go: `ceil(limit)`, then at least 2), HotSpot
//! (`CgroupUtil::processor_count`: `ceilf(quota / period)`) and .NET 6+ (`Environment.ProcessorCount`:
//! "the CPU utilization limit rounded up to the next integer"). A fractional quota (1.5 CPUs) is then
//! used in full by 2 loops at 75% each, instead of leaving half a CPU idle; someone who prefers never
//! to be throttled sets `--loops` explicitly. Unlike Go we keep a minimum of 1, not 2: Go's floor exists
//! for its GC's background workers, while a loop below a 1-CPU quota only ever has itself to schedule.
//!
//! Finding the cgroup, like Go and HotSpot: the process's cgroup per hierarchy comes from
//! `/proc/self/cgroup` (`0::PATH` for v2, `N:cpu,cpuacct:PATH` for the v1 cpu controller), the
//! directory it lives in from `/proc/self/mountinfo` (a `cgroup2` mount, or a `cgroup` mount whose
//! super options name `cpu`; the mount's root is stripped from PATH). On hybrid hosts both exist and
//! both are read; the smaller limit wins.
//!
//! The kernel enforces every ancestor's quota too, and systemd (`CPUQuota=` on a slice) or Kubernetes
//! (the pod cgroup above the container's) may put the tighter one on a parent, so we walk from the
//! process's cgroup up to the mount point and keep the smallest limit, as HotSpot does
//! (JDK-8322420, `CgroupUtil::adjust_controller`). Go reads only the leaf (golang/go#81180 shows a parent
//! limit missed); the walk costs a handful of small reads once at start-up.
//!
//! Invariants: detection never fails — a missing, unreadable or malformed file means "no limit there"
//! — and never reads outside the mount point it found (a PATH with `..` is read at the mount point only).
//! `PERCORE_CGROUP_ROOT` (for tests) makes it read `proc/self/cgroup`, `proc/self/mountinfo` and the
//! mount points under that directory instead of `/`.
//!
//! Over 500 lines: the tests (a fake cgroup tree per case) are ~250 of them.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The environment variable that points detection at a fake root (tests of `--loops auto`).
pub const ROOT_ENV: &str = "PERCORE_CGROUP_ROOT";

/// The files read are a few lines each; mountinfo on a busy host is the largest (thousands of mounts
/// stay well under this). Beyond it the rest is ignored rather than buffered.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A CFS bandwidth limit: `quota` µs of CPU time every `period` µs, i.e. `quota / period` CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota: u64,
    pub period: u64,
    /// The cgroup that sets it, as `/proc/self/cgroup` names cgroups (an ancestor of ours if tighter).
    pub cgroup: String,
}

impl CpuQuota {
    /// The quota in CPUs, rounded up (see the module doc), at least 1.
    pub fn cpus_rounded_up(&self) -> usize {
        usize::try_from(self.quota.div_ceil(self.period))
            .unwrap_or(usize::MAX)
            .max(1)
    }

    fn cpus(&self) -> f64 {
        self.quota as f64 / self.period as f64
    }
}

/// What `--loops auto` may use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuBudget {
    /// CPUs in the affinity mask.
    pub affinity: usize,
    /// The tightest CPU quota of this process's cgroups, if any.
    pub quota: Option<CpuQuota>,
}

impl CpuBudget {
    /// Reads the quota of this process's cgroups (under `PERCORE_CGROUP_ROOT` when set).
    pub fn detect(affinity: usize) -> Self {
        let root = std::env::var_os(ROOT_ENV)
            .filter(|value| !value.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from);
        CpuBudget {
            affinity,
            quota: cpu_quota_under(&root),
        }
    }

    /// `min(affinity, ceil(quota))`, at least 1.
    pub fn cpus(&self) -> usize {
        let quota = self
            .quota
            .as_ref()
            .map_or(usize::MAX, CpuQuota::cpus_rounded_up);
        self.affinity.min(quota).max(1)
    }
}

impl fmt::Display for CpuBudget {
    /// Why `--loops auto` chose its count, for the banner.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let affinity = plural(self.affinity, "CPU");
        match &self.quota {
            None => write!(f, "affinity {affinity}, no CPU quota"),
            Some(quota) => {
                let rounded = if quota.quota % quota.period == 0 {
                    ""
                } else {
                    ", rounded up"
                };
                write!(
                    f,
                    "CPU quota {} of cgroup {}{rounded}; affinity {affinity}",
                    short_number(quota.cpus()),
                    quota.cgroup
                )
            }
        }
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// 2.0, 1.5, 0.25, 0.33: two decimals at most, one at least.
fn short_number(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0');
    if text.ends_with('.') {
        format!("{text}0")
    } else {
        text.to_owned()
    }
}

/// The tightest CPU quota over this process's v2 and v1 cpu cgroups and their ancestors, reading
/// `/proc/self/*` and the cgroup mounts under `root` (`/` normally).
pub fn cpu_quota_under(root: &Path) -> Option<CpuQuota> {
    let memberships = read_small(&root.join("proc/self/cgroup"))?;
    let mountinfo = read_small(&root.join("proc/self/mountinfo"))?;
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let mut tightest: Option<CpuQuota> = None;
    for (version, cgroup) in memberships.lines().filter_map(membership) {
        let Some((mount, relative)) = find_mount(&mounts, version, cgroup) else {
            continue;
        };
        if let Some(quota) = walk_up(root, mount, &relative, version) {
            keep_tighter(&mut tightest, quota);
        }
    }
    tightest
}

/// Replaces `best` with `candidate` if it allows fewer CPUs (compared exactly: q1/p1 < q2/p2 <=>
/// q1*p2 < q2*p1, in u128 so nothing overflows).
fn keep_tighter(best: &mut Option<CpuQuota>, candidate: CpuQuota) {
    let tighter = best.as_ref().is_none_or(|best| {
        u128::from(candidate.quota) * u128::from(best.period)
            < u128::from(best.quota) * u128::from(candidate.period)
    });
    if tighter {
        *best = Some(candidate);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A `/proc/self/cgroup` line that matters: `0::PATH` (v2) or `N:...,cpu,...:PATH` (v1 cpu controller).
fn membership(line: &str) -> Option<(Version, &str)> {
    let mut fields = line.splitn(3, ':');
    let id = fields.next()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    if !path.starts_with('/') {
        return None;
    }
    if id == "0" && controllers.is_empty() {
        Some((Version::V2, path))
    } else if controllers.split(',').any(|name| name == "cpu") {
        Some((Version::V1, path))
    } else {
        None
    }
}

/// A cgroup mount from `/proc/self/mountinfo`: which hierarchy, the cgroup it shows, and where.
#[derive(Debug)]
struct Mount {
    version: Version,
    /// The cgroup (in `/proc/self/cgroup`'s terms) that appears at `point`.
    root: String,
    point: String,
}

impl Mount {
    /// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let mut before = before.split(' ');
        let root = unescape(before.nth(3)?);
        let point = unescape(before.next()?);
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let super_options = after.nth(1).unwrap_or("");
        let version = match fstype {
            "cgroup2" => Version::V2,
            "cgroup" if super_options.split(',').any(|option| option == "cpu") => Version::V1,
            _ => return None,
        };
        Some(Mount {
            version,
            root,
            point,
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount of `version`'s hierarchy that shows `cgroup` (the one with the longest root that is an
/// ancestor of it), and `cgroup` relative to that root. A cgroup outside every mount's root (a cgroup
/// namespace boundary, or `..` in the path) is read at the first such mount's point only, as HotSpot does
/// for a moved cgroup: that is the closest directory we can see.
fn find_mount<'a>(
    mounts: &'a [Mount],
    version: Version,
    cgroup: &str,
) -> Option<(&'a Mount, PathBuf)> {
    let candidates = mounts.iter().filter(|mount| mount.version == version);
    let inside = candidates
        .clone()
        .filter_map(|mount| Some((mount, relative_to(&mount.root, cgroup)?)))
        .max_by_key(|(mount, _)| mount.root.len());
    inside.or_else(|| Some((candidates.clone().next()?, PathBuf::new())))
}

/// `cgroup` below `root` as a relative path of plain names; None if it is not below it or has `..`.
fn relative_to(root: &str, cgroup: &str) -> Option<PathBuf> {
    let rest = Path::new(cgroup).strip_prefix(root).ok()?;
    let mut relative = PathBuf::new();
    for component in rest.components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(relative)
}

/// The tightest limit from the cgroup's directory up to the mount point, both included.
fn walk_up(root: &Path, mount: &Mount, relative: &Path, version: Version) -> Option<CpuQuota> {
    let point = root.join(mount.point.trim_start_matches('/'));
    let mut tightest: Option<CpuQuota> = None;
    let mut level = Some(relative);
    while let Some(dir) = level {
        if let Some((quota, period)) = read_limit(&point.join(dir), version) {
            // (Joining an empty path would add a trailing '/'.)
            let cgroup = if dir.as_os_str().is_empty() {
                mount.root.clone()
            } else {
                Path::new(&mount.root)
                    .join(dir)
                    .to_string_lossy()
                    .into_owned()
            };
            let quota = CpuQuota {
                quota,
                period,
                cgroup,
            };
            keep_tighter(&mut tightest, quota);
        }
        level = dir.parent();
    }
    tightest
}

/// `(quota, period)` of one cgroup directory; None for "no limit" and for anything unreadable or malformed.
fn read_limit(dir: &Path, version: Version) -> Option<(u64, u64)> {
    let (quota, period) = match version {
        Version::V2 => {
            let text = read_small(&dir.join("cpu.max"))?;
            let mut fields = text.split_whitespace();
            let quota = fields.next()?;
            let period = fields.next()?;
            if fields.next().is_some() {
                return None;
            }
            (quota.to_owned(), period.to_owned())
        }
        Version::V1 => (
            read_small(&dir.join("cpu.cfs_quota_us"))?.trim().to_owned(),
            read_small(&dir.join("cpu.cfs_period_us"))?
                .trim()
                .to_owned(),
        ),
    };
    // "max" (v2) and -1 (v1) mean no limit; they, and garbage, fail to parse as u64.
    let quota: u64 = quota.parse().ok()?;
    let period: u64 = period.parse().ok()?;
    (quota > 0 && period > 0).then_some((quota, period))
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake `/` in a fresh temporary directory: `proc/self/*` and cgroup files written by the test.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "percore-cgroup-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("proc/self")).unwrap();
            FakeRoot(dir)
        }

        fn write(&self, path: &str, text: &str) -> &Self {
            let path = self.0.join(path.trim_start_matches('/'));
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
            self
        }

        fn quota(&self) -> Option<CpuQuota> {
            cpu_quota_under(&self.0)
        }

        fn budget(&self, affinity: usize) -> CpuBudget {
            CpuBudget {
                affinity,
                quota: self.quota(),
            }
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const V2_MOUNTINFO: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    fn v2(name: &str, cgroup: &str) -> FakeRoot {
        let root = FakeRoot::new(name);
        root.write("proc/self/cgroup", &format!("0::{cgroup}\n"))
            .write("proc/self/mountinfo", V2_MOUNTINFO);
        root
    }

    #[test]
    fn v2_quota_of_two_cpus_caps_a_64_cpu_mask() {
        let root = v2("v2", "/kubepods/pod1/c1");
        root.write("sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "200000 100000\n");
        let budget = root.budget(64);
        assert_eq!(budget.cpus(), 2);
        assert_eq!(
            budget.to_string(),
            "CPU quota 2.0 of cgroup /kubepods/pod1/c1; affinity 64 CPUs"
        );
    }

    #[test]
    fn v2_max_is_no_limit() {
        let root = v2("v2max", "/user.slice");
        root.write("sys/fs/cgroup/user.slice/cpu.max", "max 100000\n");
        let budget = root.budget(8);
        assert_eq!(budget.quota, None);
        assert_eq!(budget.cpus(), 8);
        assert_eq!(budget.to_string(), "affinity 8 CPUs, no CPU quota");
    }

    #[test]
    fn no_cgroup_files_at_all_is_no_limit() {
        let root = FakeRoot::new("empty");
        assert_eq!(root.budget(4).cpus(), 4);
        assert_eq!(cpu_quota_under(Path::new("/nonexistent/percore")), None);
    }

    #[test]
    fn v1_cfs_quota_and_period() {
        let root = FakeRoot::new("v1");
        root.write(
            "proc/self/cgroup",
            "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
        )
        .write(
            "proc/self/mountinfo",
            "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
             29 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n\
             30 25 0:27 /docker/abc /sys/fs/cgroup/cpuset ro,nosuid - cgroup cgroup rw,cpuset\n",
        )
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n")
        .write("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let budget = root.budget(16);
        assert_eq!(budget.cpus(), 2, "1.5 CPUs round up to 2");
        assert_eq!(
            budget.to_string(),
            "CPU quota 1.5 of cgroup /docker/abc, rounded up; affinity 16 CPUs"
        );
    }

    #[test]
    fn v1_minus_one_is_no_limit() {
        let root = FakeRoot::new("v1none");
        root.write("proc/self/cgroup", "2:cpu:/\n")
            .write(
                "proc/self/mountinfo",
                "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
            )
            .write("sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
            .write("sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
        assert_eq!(root.quota(), None);
    }

    #[test]
    fn a_quota_under_one_cpu_still_runs_one_loop() {
        let root = v2("small", "/");
        root.write("sys/fs/cgroup/cpu.max", "25000 100000\n");
        let budget = root.budget(8);
        assert_eq!(budget.cpus(), 1);
        assert!(budget
            .to_string()
            .starts_with("CPU quota 0.25 of cgroup /, rounded up"));
    }

    #[test]
    fn a_quota_larger_than_the_mask_leaves_the_mask() {
        let root = v2("large", "/big");
        root.write("sys/fs/cgroup/big/cpu.max", "1600000 100000\n");
        let budget = root.budget(4);
        assert_eq!(budget.quota.as_ref().unwrap().cpus_rounded_up(), 16);
        assert_eq!(budget.cpus(), 4);
    }

    #[test]
    fn a_tighter_parent_limit_wins_over_an_unlimited_leaf() {
        let root = v2("parent", "/system.slice/app.service");
        root.write("sys/fs/cgroup/system.slice/cpu.max", "300000 100000\n")
            .write(
                "sys/fs/cgroup/system.slice/app.service/cpu.max",
                "max 100000\n",
            );
        let quota = root.quota().unwrap();
        assert_eq!((quota.quota, quota.period), (300000, 100000));
        assert_eq!(quota.cgroup, "/system.slice");
        // ...and a tighter leaf wins over a looser parent.
        root.write(
            "sys/fs/cgroup/system.slice/app.service/cpu.max",
            "100000 100000",
        );
        assert_eq!(root.quota().unwrap().cgroup, "/system.slice/app.service");
    }

    #[test]
    fn the_mount_root_is_stripped_and_nothing_above_the_mount_is_read() {
        // Docker with the host's cgroup namespace: the container's cgroup is mounted as the root.
        let root = FakeRoot::new("mountroot");
        root.write("proc/self/cgroup", "0::/docker/abc\n")
            .write(
                "proc/self/mountinfo",
                "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            )
            .write("sys/fs/cgroup/cpu.max", "400000 100000\n")
            .write("sys/cpu.max", "100000 100000\n"); // above the mount: must not be read
        let quota = root.quota().unwrap();
        assert_eq!(quota.cpus_rounded_up(), 4);
        assert_eq!(quota.cgroup, "/docker/abc");
    }

    #[test]
    fn a_path_escaping_the_mount_is_read_at_the_mount_point_only() {
        let root = FakeRoot::new("escape");
        root.write("proc/self/cgroup", "0::/../../etc\n")
            .write("proc/self/mountinfo", V2_MOUNTINFO)
            .write("sys/fs/cgroup/cpu.max", "200000 100000\n")
            .write("etc/cpu.max", "100000 100000\n");
        assert_eq!(root.quota().unwrap().cpus_rounded_up(), 2);
    }

    #[test]
    fn hybrid_hosts_take_the_smaller_of_v1_and_v2() {
        let root = FakeRoot::new("hybrid");
        root.write("proc/self/cgroup", "3:cpu:/a\n0::/b\n")
            .write(
                "proc/self/mountinfo",
                "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                 41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            )
            .write("sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "300000")
            .write("sys/fs/cgroup/cpu/a/cpu.cfs_period_us", "100000")
            .write("sys/fs/cgroup/unified/b/cpu.max", "50000 100000");
        assert_eq!(root.quota().unwrap().cgroup, "/b");
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        let root = FakeRoot::new("escaped");
        root.write("proc/self/cgroup", "0::/\n")
            .write(
                "proc/self/mountinfo",
                "30 23 0:26 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n",
            )
            .write("sys/fs/my cgroup/cpu.max", "200000 100000");
        assert_eq!(root.quota().unwrap().cpus_rounded_up(), 2);
    }

    #[test]
    fn malformed_files_are_ignored_without_a_crash() {
        for cpu_max in [
            "",
            "garbage",
            "200000",
            "200000 0",
            "0 100000",
            "-5 100000",
            "200000 100000 7",
            "99999999999999999999999 1",
            "\u{0}\u{1}",
        ] {
            let root = v2("bad", "/x");
            root.write("sys/fs/cgroup/x/cpu.max", cpu_max);
            assert_eq!(root.quota(), None, "cpu.max {cpu_max:?}");
        }
        let root = FakeRoot::new("badproc");
        root.write("proc/self/cgroup", "nonsense\n::\n0::relative\n5\n")
            .write("proc/self/mountinfo", "- cgroup2\n1 2 3\n\n - - - \n");
        assert_eq!(root.quota(), None);
        // A huge quota saturates instead of overflowing.
        let root = v2("huge", "/");
        root.write("sys/fs/cgroup/cpu.max", &format!("{} 1", u64::MAX));
        assert_eq!(root.budget(3).cpus(), 3);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(2.0), "2.0");
        assert_eq!(short_number(1.5), "1.5");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(1.0 / 3.0), "0.33");
    }
}
