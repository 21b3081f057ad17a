//! Memory and CPU limits of managed plugin processes.
//!
//! Preferred: a cgroup made for the plugin, below the node's own cgroup. With cgroup v2 (one
//! unified hierarchy) the node writes `memory.max` and `cpu.max`; with cgroup v1 it uses the
//! `memory` (`memory.limit_in_bytes`) and `cpu` (`cpu.cfs_quota_us`) hierarchies. The plugin
//! joins its cgroup itself, in the forked child before the plugin program starts (writing `0` to
//! `cgroup.procs`), so not one instruction of the plugin runs unlimited.
//!
//! Fallback, when no cgroup can be made (no permission, or cgroup v2 with the node in a cgroup
//! that cannot have children with controllers): memory is capped with `RLIMIT_AS` (address space),
//! and CPU is not limited. [`LimitsApplied`] says which happened; `GET /plugins` shows it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

/// Root of the cgroup file systems.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// CPU accounting period for CPU limits, in microseconds.
const CPU_PERIOD_MICROS: u64 = 100_000;

/// How a limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// No limit was asked for.
    None,
    /// By the plugin's own cgroup.
    Cgroup,
    /// By a resource limit (`RLIMIT_AS` for memory).
    Rlimit,
    /// Asked for, but this machine offers no way to enforce it (see the node's log).
    NotEnforced,
}

/// How the limits of a plugin process are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitsApplied {
    /// The memory limit.
    pub memory: Enforcement,
    /// The CPU limit.
    pub cpu: Enforcement,
}

/// The limits to give a plugin process, prepared before it is forked.
#[derive(Debug)]
pub struct PreparedLimits {
    /// Cgroup directories made for the process; removed when this is dropped.
    cgroup_dirs: Vec<PathBuf>,
    /// `cgroup.procs` files the child writes `0` to, joining its cgroups.
    join_paths: Vec<CString>,
    /// Address-space limit to set in the child, when no cgroup limits memory.
    address_space_limit: Option<u64>,
    /// How each limit is enforced.
    pub applied: LimitsApplied,
}

impl PreparedLimits {
    /// Makes cgroups for the plugin `name` limited to `memory_bytes` and `cpu_percent` (of one
    /// core), or plans the fallback.
    pub fn prepare(name: &str, memory_bytes: Option<u64>, cpu_percent: Option<u32>) -> Self {
        let mut prepared = Self {
            cgroup_dirs: Vec::new(),
            join_paths: Vec::new(),
            address_space_limit: None,
            applied: LimitsApplied {
                memory: Enforcement::None,
                cpu: Enforcement::None,
            },
        };
        if memory_bytes.is_none() && cpu_percent.is_none() {
            return prepared;
        }
        let group_name = unique_group_name(name);
        let own_cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if let Some(memory_bytes) = memory_bytes {
            let settings = [
                ("memory.max", memory_bytes.to_string()),
                ("memory.limit_in_bytes", memory_bytes.to_string()),
            ];
            prepared.applied.memory = match prepared.make_cgroup(
                &own_cgroups,
                "memory",
                &group_name,
                &settings,
            ) {
                Ok(()) => Enforcement::Cgroup,
                Err(error) => {
                    tracing::warn!(plugin = name, %error, "no cgroup for the memory limit; capping address space instead");
                    prepared.address_space_limit = Some(memory_bytes);
                    Enforcement::Rlimit
                }
            };
        }
        if let Some(cpu_percent) = cpu_percent {
            let quota = u64::from(cpu_percent) * CPU_PERIOD_MICROS / 100;
            let settings = [
                ("cpu.max", format!("{quota} {CPU_PERIOD_MICROS}")),
                ("cpu.cfs_period_us", CPU_PERIOD_MICROS.to_string()),
                ("cpu.cfs_quota_us", quota.to_string()),
            ];
            prepared.applied.cpu = match prepared.make_cgroup(
                &own_cgroups,
                "cpu",
                &group_name,
                &settings,
            ) {
                Ok(()) => Enforcement::Cgroup,
                Err(error) => {
                    tracing::warn!(plugin = name, %error, "no cgroup for the CPU limit; it is not enforced");
                    Enforcement::NotEnforced
                }
            };
        }
        prepared
    }

    /// Makes (or reuses, for cgroup v2's single hierarchy) the plugin's cgroup for `controller`
    /// and writes the settings that exist in it.
    fn make_cgroup(
        &mut self,
        own_cgroups: &str,
        controller: &str,
        group_name: &str,
        settings: &[(&str, String)],
    ) -> std::io::Result<()> {
        let parent = own_cgroup_dir(own_cgroups, controller).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {controller} cgroup hierarchy"),
            )
        })?;
        let unified = parent.join("cgroup.controllers").exists();
        if unified {
            enable_controller(&parent, controller)?;
        }
        let dir = parent.join(group_name);
        if !self.cgroup_dirs.contains(&dir) {
            std::fs::create_dir(&dir)?;
            self.cgroup_dirs.push(dir.clone());
            let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
            self.join_paths.push(procs);
        }
        let mut written = 0;
        for (file, value) in settings {
            let path = dir.join(file);
            if path.exists() {
                std::fs::write(&path, value)?;
                written += 1;
            }
        }
        if written == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!(
                    "the {controller} controller is not available in {}",
                    dir.display()
                ),
            ));
        }
        Ok(())
    }

    /// Applies the limits to the calling process. Runs in the forked child before `exec`: only
    /// async-signal-safe calls, on values prepared before the fork.
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        for path in &self.join_paths {
            // SAFETY: open/write/close are async-signal-safe; `path` is a valid C string.
            unsafe {
                let descriptor = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if descriptor < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(descriptor, b"0".as_ptr().cast(), 1);
                libc::close(descriptor);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        if let Some(bytes) = self.address_space_limit {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` lives on this stack frame.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Drop for PreparedLimits {
    fn drop(&mut self) {
        // The process has exited by now, so its cgroups are empty and can go.
        for dir in &self.cgroup_dirs {
            if let Err(error) = std::fs::remove_dir(dir) {
                tracing::debug!(dir = %dir.display(), %error, "could not remove plugin cgroup");
            }
        }
    }
}

/// Removes the plugin cgroups that nodes killed without a chance to clean up left behind
/// (named `sphere-<node pid>-...`, with that node gone). Non-empty ones are left alone.
pub fn remove_stale_cgroups() {
    let own_cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let parents: std::collections::BTreeSet<PathBuf> = ["memory", "cpu"]
        .into_iter()
        .filter_map(|controller| own_cgroup_dir(&own_cgroups, controller))
        .collect();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(node_pid) = name
                .strip_prefix("sphere-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{node_pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Returns a cgroup name unique to this node process and plugin start.
fn unique_group_name(plugin: &str) -> String {
    static STARTS: AtomicU32 = AtomicU32::new(0);
    let safe: String = plugin
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "sphere-{}-{safe}-{}",
        std::process::id(),
        STARTS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Returns the directory of this process's own cgroup holding `controller`: the unified
/// hierarchy's (`0::/path`) under cgroup v2, the controller's hierarchy under cgroup v1.
fn own_cgroup_dir(own_cgroups: &str, controller: &str) -> Option<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        let path = own_cgroups
            .lines()
            .find_map(|line| line.strip_prefix("0::"))?;
        return Some(root.join(path.trim_start_matches('/')));
    }
    own_cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|name| name == controller)
            .then(|| root.join(controllers).join(path.trim_start_matches('/')))
    })
}

/// Enables `controller` for the children of a cgroup v2 directory.
fn enable_controller(parent: &Path, controller: &str) -> std::io::Result<()> {
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    if enabled.split_whitespace().any(|name| name == controller) {
        return Ok(());
    }
    std::fs::write(
        parent.join("cgroup.subtree_control"),
        format!("+{controller}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_is_found_in_v1_listings() {
        let listing = "4:memory:/process_api/abc\n1:cpu:/\n2:cpu,cpuacct:/x\n";
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            return; // The unified layout is read instead on this machine.
        }
        assert_eq!(
            own_cgroup_dir(listing, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            own_cgroup_dir(listing, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(own_cgroup_dir(listing, "pids"), None);
    }

    #[test]
    fn no_limits_prepare_nothing() {
        let prepared = PreparedLimits::prepare("p", None, None);
        assert_eq!(prepared.applied.memory, Enforcement::None);
        assert_eq!(prepared.applied.cpu, Enforcement::None);
        assert!(prepared.join_paths.is_empty() && prepared.address_space_limit.is_none());
    }

    #[test]
    fn group_names_are_unique_and_path_safe() {
        let first = unique_group_name("csv stats/1");
        let second = unique_group_name("csv stats/1");
        assert_ne!(first, second);
        assert!(!first.contains('/') && !first.contains(' '));
    }
}
