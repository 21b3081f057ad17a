//! A plugin process the node starts, watches and stops itself.
//!
//! Start-up handshake: the node sets `SPHERE_PLUGIN_LISTEN=127.0.0.1:0`; the plugin binds it and
//! prints `SPHERE_PLUGIN_ADDR=<host:port>` on stdout. Everything else the plugin prints goes to
//! the node's log, tagged with the plugin's name.
//!
//! Limits (`memory_limit_bytes`, `cpu_limit_percent`) are applied in the child before it runs the
//! plugin program; see [`super::limits`].
//!
//! No orphans: the plugin gets its own process group (so the node decides when it stops, not the
//! terminal's Ctrl-C), and the kernel kills it when the node dies, even by SIGKILL
//! (`PR_SET_PDEATHSIG`). On shutdown the node sends SIGTERM to the group and SIGKILL after a grace
//! period.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use sphere_plugin::{ADDR_LINE_PREFIX, LISTEN_ENV, MAX_MESSAGE_ENV};

use super::limits::{LimitsApplied, PreparedLimits};
use crate::config::PluginConfig;

/// How long a starting plugin has to announce its address.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping plugin has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Failures to start a plugin process.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The program could not be run.
    #[error("could not start plugin {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin exited or stayed silent instead of announcing its address.
    #[error(
        "plugin {program} did not print {ADDR_LINE_PREFIX}<address> within {HANDSHAKE_TIMEOUT:?}: {reason}"
    )]
    Handshake {
        /// The program.
        program: String,
        /// What happened instead.
        reason: String,
    },
}

/// A running plugin child process.
#[derive(Debug)]
pub struct ManagedPlugin {
    name: String,
    child: Child,
    address: String,
    /// The process's cgroups, removed when the process is gone.
    limits: std::sync::Arc<PreparedLimits>,
}

impl ManagedPlugin {
    /// Starts the managed plugin `name` as `config` says (`command`, `args`, `env`,
    /// `working_dir`, `memory_limit_bytes`) and waits for its address.
    ///
    /// Must be called from a thread that outlives the plugin (a runtime thread, not the blocking
    /// pool): the kernel's parent-death signal fires when the spawning thread exits.
    pub async fn start(name: &str, config: &PluginConfig) -> Result<Self, StartError> {
        let program = config.command.as_deref().unwrap_or_default();
        let mut command = Command::new(program);
        if let Some(working_dir) = &config.working_dir {
            command.current_dir(working_dir);
        }
        let limits = std::sync::Arc::new(PreparedLimits::prepare(
            name,
            config.memory_limit_bytes,
            config.cpu_limit_percent,
        ));
        let child_limits = std::sync::Arc::clone(&limits);
        command
            .args(&config.args)
            .envs(&config.env)
            .env(LISTEN_ENV, "127.0.0.1:0")
            .env(MAX_MESSAGE_ENV, max_message_bytes(config).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls, on values prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                child_limits.apply_in_child()
            });
        }
        let mut child = command.spawn().map_err(|source| StartError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        forward_to_log(name.to_owned(), "stderr", stderr);

        let mut stdout_lines = BufReader::new(stdout).lines();
        let handshake = async {
            while let Some(line) = stdout_lines.next_line().await? {
                if let Some(address) = line.trim().strip_prefix(ADDR_LINE_PREFIX) {
                    return Ok(Some(address.to_owned()));
                }
                tracing::info!(plugin = name, stream = "stdout", "{line}");
            }
            Ok::<_, std::io::Error>(None)
        };
        let handshake_failed = |reason: String| StartError::Handshake {
            program: program.to_owned(),
            reason,
        };
        let address = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(Some(address))) => address,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                return Err(handshake_failed(format!("it exited ({status:?})")));
            }
            Ok(Err(error)) => return Err(handshake_failed(error.to_string())),
            Err(_elapsed) => return Err(handshake_failed("it stayed silent".to_owned())),
        };
        forward_lines_to_log(name.to_owned(), "stdout", stdout_lines);
        tracing::info!(plugin = name, %address, pid = child.id(), "plugin process started");
        Ok(Self {
            name: name.to_owned(),
            child,
            address: format!("http://{address}"),
            limits,
        })
    }

    /// Returns how the process's limits are enforced.
    pub fn limits(&self) -> LimitsApplied {
        self.limits.applied
    }

    /// Returns the process ID, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit and says how it did ("exited with status 3", "was killed
    /// by signal 9").
    pub async fn wait(&mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        match self.child.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => format!("ended ({status})"),
            },
            Err(error) => format!("could not be waited for: {error}"),
        }
    }

    /// Returns the plugin's gRPC address as an `http://` URI.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the plugin's process group to stop (SIGTERM), and kills it after a grace period.
    pub async fn stop(mut self) {
        let Some(pid) = self.child.id() else {
            return;
        };
        let group = -(i32::try_from(pid).expect("pids fit in i32"));
        // SAFETY: kill(2) with a negative pid signals the process group we created at spawn.
        unsafe { libc::kill(group, libc::SIGTERM) };
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => tracing::info!(plugin = self.name, ?status, "plugin process stopped"),
            Err(_elapsed) => {
                tracing::warn!(plugin = self.name, "plugin ignored SIGTERM; killing it");
                // SAFETY: as above.
                unsafe { libc::kill(group, libc::SIGKILL) };
                let _ = self.child.wait().await;
            }
        }
    }
}

/// Returns the largest gRPC message the plugin of `config` must accept and may send: its input
/// and output limits, plus room for framing and the task ID.
pub(super) fn max_message_bytes(config: &PluginConfig) -> u64 {
    config
        .max_input_bytes
        .max(config.max_output_bytes)
        .saturating_add(64 * 1024)
}

fn forward_to_log(
    name: String,
    stream: &'static str,
    output: impl AsyncRead + Unpin + Send + 'static,
) {
    forward_lines_to_log(name, stream, BufReader::new(output).lines());
}

fn forward_lines_to_log<R: AsyncRead + Unpin + Send + 'static>(
    name: String,
    stream: &'static str,
    mut lines: tokio::io::Lines<BufReader<R>>,
) {
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(plugin = name, stream, "{line}");
        }
    });
}
