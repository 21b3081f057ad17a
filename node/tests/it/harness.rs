//! Starts, kills and restarts real node processes for the tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Longest a node may take to say it is ready.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Longest a node's REST API may stay silent in the middle of an answer to a test.
const SILENCE_LIMIT: Duration = Duration::from_secs(120);

/// A `sphere node` process started by a test.
pub struct TestNode {
    child: Child,
    pub node_id: String,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    /// Extra `SPHERE_*` variables the node was started with, reused on restart.
    environment: Vec<(String, String)>,
    /// The configuration the node was started with, reused on restart.
    config: Option<Value>,
    /// The file limit the node was started with, reused on restart.
    file_limit: Option<u64>,
    client: reqwest::Client,
    /// Whether dropping the node removes its data directory (kept when the test failed, to
    /// look at its log; handed over on restart).
    removes_data_dir: bool,
}

/// How to start a test node.
#[derive(Default, Clone)]
pub struct NodeOptions {
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// gRPC address; `127.0.0.1:0` when `None`.
    pub grpc_listen: Option<SocketAddr>,
    /// REST address; `127.0.0.1:0` when `None`.
    pub http_listen: Option<SocketAddr>,
    /// Extra environment variables (configuration overrides).
    pub environment: Vec<(String, String)>,
    /// A configuration file's content, written into the data directory and passed with
    /// `--config`.
    pub config: Option<Value>,
    /// The node's limit on open files (soft and hard); inherited when `None`.
    pub file_limit: Option<u64>,
}

impl TestNode {
    /// Starts a node with defaults in a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(NodeOptions::default())
    }

    /// Starts a node as `options` say, and waits for its ready line.
    pub fn start_with(options: NodeOptions) -> Self {
        let data_dir = options.data_dir.unwrap_or_else(|| {
            tempfile::Builder::new()
                .prefix("sphere-it-")
                .tempdir()
                .expect("temp dir")
                .keep()
        });
        let grpc_listen = options
            .grpc_listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |address| address.to_string());
        let http_listen = options
            .http_listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |address| address.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("node.log"))
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sphere"));
        command
            .args([
                "node",
                "--http-listen",
                &http_listen,
                "--grpc-listen",
                &grpc_listen,
            ])
            .arg("--data-dir")
            .arg(&data_dir);
        if let Some(config) = &options.config {
            let path = data_dir.join("config.json");
            std::fs::write(&path, config.to_string()).expect("write config");
            command.arg("--config").arg(path);
        }
        if let Some(limit) = options.file_limit {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .envs(options.environment.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("sphere binary runs");
        let stdout = child.stdout.take().expect("piped");
        let (ready_sender, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_sender.send(line);
        });
        // A node that hangs while starting fails this test, not the whole run.
        let ready_line = ready.recv_timeout(START_LIMIT).unwrap_or_else(|_| {
            let _ = child.kill();
            String::new()
        });
        assert!(
            ready_line.starts_with("sphere node "),
            "node did not start within {START_LIMIT:?}; its log:\n{}",
            std::fs::read_to_string(data_dir.join("node.log")).unwrap_or_default()
        );
        let field = |name: &str| -> String {
            ready_line
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {ready_line:?}"))
                .to_owned()
        };
        let node_id = ready_line
            .split_whitespace()
            .nth(2)
            .expect("node id in ready line")
            .to_owned();
        TestNode {
            child,
            node_id,
            http: reachable(field("http").parse().expect("http address")),
            grpc: field("grpc").parse().expect("grpc address"),
            data_dir,
            environment: options.environment,
            config: options.config,
            file_limit: options.file_limit,
            client: reqwest::Client::builder()
                .read_timeout(SILENCE_LIMIT)
                .build()
                .expect("HTTP client"),
            removes_data_dir: true,
        }
    }

    /// Returns the process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the node's gRPC address as a task or file target.
    pub fn target(&self) -> String {
        self.grpc.to_string()
    }

    /// Connects to the node's `TaskService` as a plaintext local client (no node key).
    pub async fn task_client(
        &self,
    ) -> sphere_proto::v1::task_service_client::TaskServiceClient<tonic::transport::Channel> {
        sphere_proto::v1::task_service_client::TaskServiceClient::connect(format!(
            "http://{}",
            self.grpc
        ))
        .await
        .expect("connect")
    }

    /// Runs `sphere <args> --node <this node's REST URL>`; returns whether it succeeded, its
    /// stdout and its stderr.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let output = run(sphere().args(args).args(["--node", &self.url("")]));
        (
            output.status.success(),
            String::from_utf8(output.stdout).expect("UTF-8"),
            String::from_utf8(output.stderr).expect("UTF-8"),
        )
    }

    /// Returns the URL of `path` on the node's REST API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Returns an HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `method path` with a raw body (as `curl -d` would) and returns status and JSON.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .request(method, self.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("node answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("answer is not JSON ({error}): {text:?}"));
        (status, json)
    }

    /// `POST path` with a JSON value.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, &body.to_string())
            .await
    }

    /// Kills the node with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        wait_with_timeout(&mut self.child, Duration::from_secs(30))
    }

    /// Starts the node again after it stopped: same data directory, same gRPC address, same
    /// environment (the REST port may differ).
    pub fn restart(&mut self) {
        self.restart_with_config(self.config.clone());
    }

    /// [`Self::restart`] on new ports: its address changes, its key and data stay.
    pub fn restart_elsewhere(&mut self) {
        self.restart_at(None, self.config.clone());
    }

    /// [`Self::restart`] with another configuration file's content.
    pub fn restart_with_config(&mut self, config: Option<Value>) {
        self.restart_at(Some(self.grpc), config);
    }

    fn restart_at(&mut self, grpc_listen: Option<SocketAddr>, config: Option<Value>) {
        let restarted = TestNode::start_with(NodeOptions {
            data_dir: Some(self.data_dir.clone()),
            grpc_listen,
            http_listen: None,
            environment: self.environment.clone(),
            config,
            file_limit: self.file_limit,
        });
        self.removes_data_dir = false;
        *self = restarted;
    }

    /// Returns the node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A passing test leaves nothing behind (some write gigabytes); a failing one keeps the
        // node's directory and log for a look.
        if self.removes_data_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Returns `address` with an unspecified IP (`0.0.0.0`) replaced by loopback, to connect to.
fn reachable(mut address: SocketAddr) -> SocketAddr {
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    address
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a pid this test started.
    unsafe { libc::kill(pid as i32, signal) };
}

/// Waits for `child` to exit, killing it and failing the test after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    wait_or_kill(child, timeout)
        .unwrap_or_else(|| panic!("process {} did not exit within {timeout:?}", child.id()))
}

/// Waits at most `timeout` for `child` to exit; `None`, with the child killed, when it did not.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the PIDs of the live (not zombie) children of `parent`, read from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = after_name.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields
            .next()
            .and_then(|field| field.parse().ok())
            .unwrap_or(0);
        if ppid == parent && state != "Z" {
            children.push(pid);
        }
    }
    children
}

/// Returns whether process `pid` is alive (and not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `condition` to hold, polling.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Returns every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Base64 of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Returns the repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_owned()
}

/// Returns a directory holding the Python gRPC stubs of `proto/sphere/v1/plugin.proto`,
/// generated once per test run with grpcio-tools (installed by `scripts/test-all`).
pub fn python_stubs() -> &'static Path {
    static STUBS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STUBS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sphere-python-stubs-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let proto = repo_root().join("proto");
        let status = Command::new("python3")
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto)
            .arg(format!("--python_out={}", dir.display()))
            .arg(format!("--grpc_python_out={}", dir.display()))
            .arg(proto.join("sphere/v1/plugin.proto"))
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "generating Python stubs failed: install the test tools with scripts/test-all \
             (pip install -r plugins/python-csv-stats/requirements.txt)"
        );
        dir
    })
}

/// Returns a plugin entry running the test plugin `node/tests/plugins/misbehaving.py`, with
/// `extra` fields merged in.
pub fn misbehaving_plugin(name: &str, extra: Value) -> Value {
    let mut entry = serde_json::json!({
        "name": name,
        "command": "python3",
        "args": [repo_root().join("node/tests/plugins/misbehaving.py")],
        "env": {"PYTHONPATH": python_stubs(), "PLUGIN_NAME": name},
    });
    merge(&mut entry, extra);
    entry
}

/// Returns a plugin entry running the node's built-in demo plugin.
pub fn hello_plugin() -> Value {
    serde_json::json!({
        "name": "hello",
        "command": env!("CARGO_BIN_EXE_sphere"),
        "args": ["demo-plugin"],
    })
}

/// Merges the fields of `extra` (an object) into `target`, recursing into objects.
pub fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(target), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, extra) => *target = extra,
    }
}

/// Returns a node configuration with these plugin entries, checked every 100 ms.
pub fn plugins_config(entries: Vec<Value>) -> Value {
    serde_json::json!({"plugins": {"health_interval_ms": 100, "entries": entries}})
}

/// Starts a node with these plugin entries.
pub fn node_with_plugins(entries: Vec<Value>) -> TestNode {
    TestNode::start_with(NodeOptions {
        config: Some(plugins_config(entries)),
        ..NodeOptions::default()
    })
}

/// Returns a command running the `sphere` binary under test.
pub fn sphere() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sphere"))
}

/// Returns `sphere node` on free loopback ports with its data in `data_dir`.
pub fn sphere_node(data_dir: &Path) -> Command {
    let mut command = sphere();
    command
        .args([
            "node",
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir);
    command
}

/// Longest a command run by [`run`] may take: far beyond what any takes here, short of what
/// would hold up the whole test run.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Runs `command` to its end and returns its status and what it printed, as `Command::output`
/// does; one still running after [`COMMAND_LIMIT`] is killed and fails the test with what it
/// printed, so that a hung command fails its own test instead of holding up the whole run.
pub fn run(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let stdout = read_to_end_in_background(child.stdout.take().expect("piped"));
    let stderr = read_to_end_in_background(child.stderr.take().expect("piped"));
    let Some(status) = wait_or_kill(&mut child, COMMAND_LIMIT) else {
        // Whatever the command started and left holding its stderr must not hold the test.
        let printed = stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        panic!(
            "{command:?} did not exit within {COMMAND_LIMIT:?}; it printed: {}",
            String::from_utf8_lossy(&printed)
        );
    };
    Output {
        status,
        stdout: stdout.recv().expect("stdout read"),
        stderr: stderr.recv().expect("stderr read"),
    }
}

/// Reads `pipe` to its end on a thread of its own; the bytes arrive on the returned channel.
fn read_to_end_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = sender.send(bytes);
    });
    receiver
}

/// Returns a loopback address where connections are refused, and the socket that keeps it so
/// for as long as it is held: bound, so no other socket gets the port, but never listening.
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let address = socket.local_addr().expect("address");
    (socket, address)
}

/// Runs `command`, which must fail; returns what it printed on stderr.
pub fn stderr_of_failure(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        !output.status.success(),
        "it succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
