//! The `sphere` command: runs a node, makes node keys, and runs the built-in demo plugin.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sphere_node::client::NodeClient;
use sphere_node::config::{self, Config};
use sphere_node::identity::NodeIdentity;
use sphere_node::node::Node;

/// Sphere: rent out spare compute and disk, or buy them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node until SIGINT or SIGTERM. Settings come from the embedded defaults, then
    /// --config, then SPHERE_* environment variables, then these flags.
    Node(NodeArgs),
    /// Writes a new node key (a secp256k1 private key, mode 0600) and prints its node ID.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long, default_value = "sphere-data/node.key")]
        out: PathBuf,
    },
    /// Sets up payments on a chain.
    #[command(subcommand)]
    Payments(PaymentsCommand),
    /// Opens, tops up, closes and shows payment channels through a running node.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Stores, reads, lists and deletes files through a running node.
    #[command(subcommand)]
    File(FileCommand),
    /// Runs tasks in the background through a running node, and shows them.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Lists the nodes a running node knows: state, node ID, address, plugins, load, labels.
    Peers {
        /// Print the answer of `GET /peers` as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Asks a running node whether it is up: exits 0 when it answers (with --strict, only when
    /// every plugin serves too), 1 otherwise. For container health checks: the image needs no
    /// curl.
    Health {
        /// Fail also when some plugin is not serving (the node is `degraded`).
        #[arg(long)]
        strict: bool,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Runs the built-in demo plugin ("hello" -> "world"); a node starts this itself.
    #[command(name = "demo-plugin", hide = true)]
    DemoPlugin,
}

#[derive(Debug, Subcommand)]
enum PaymentsCommand {
    /// Deploys the payment contract (for a development chain) and prints its address.
    Deploy {
        /// JSON-RPC endpoint of the chain.
        #[arg(long)]
        rpc_url: String,
        /// Key that pays for the deployment (a node key file).
        #[arg(long, default_value = "sphere-data/node.key")]
        key_file: PathBuf,
        /// Seconds a provider may still redeem after a requester asks to close a channel.
        #[arg(long, default_value_t = 86_400)]
        challenge_period_seconds: u64,
        /// Deploys nothing when the chain already has the contract at this address (it kept its
        /// state), and prints that address; deploys when there is no code there.
        #[arg(long, value_name = "ADDRESS")]
        unless_deployed_at: Option<alloy_primitives::Address>,
    },
    /// Shows the node's payments: balance, channels both ways, spent, earned, pending.
    Status {
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Redeems every unredeemed voucher the node received, now.
    Redeem {
        #[command(flatten)]
        node: NodeAddress,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Opens a channel to a provider with a deposit; prints the channel's ID.
    Open {
        /// The provider's node, by gRPC address (its node ID is asked for).
        #[arg(
            long,
            conflicts_with = "provider",
            required_unless_present = "provider"
        )]
        target: Option<String>,
        /// The provider's node ID (address).
        #[arg(long)]
        provider: Option<String>,
        /// The deposit: wei, or with a unit ("0.01eth", "5gwei").
        #[arg(long)]
        deposit: String,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Adds to a channel's deposit.
    Topup {
        /// The channel's ID.
        id: String,
        /// The amount: wei, or with a unit ("0.01eth").
        #[arg(long)]
        amount: String,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Asks to close a channel; run it again after the challenge period to take back the rest.
    Close {
        /// The channel's ID.
        id: String,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Finds the node's channels again on the chain, after it lost its database.
    Recover {
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Shows one channel, or every channel of the node.
    Status {
        /// The channel's ID; every channel when absent.
        id: Option<String>,
        #[command(flatten)]
        node: NodeAddress,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Hands the node a task to run in the background and prints its ID (with --wait: waits,
    /// then prints its output, and fails when the task failed).
    Run(Box<RunTaskArgs>),
    /// Shows a background task: state, node, timings, output or error (JSON).
    Status {
        /// The task's ID.
        id: String,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Lists background tasks, newest first.
    Ls {
        /// Only tasks in this state: queued, running, succeeded or failed.
        #[arg(long, value_parser = task_state)]
        state: Option<sphere_node::api::TaskState>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeAddress,
    },
}

/// What `sphere task run` asks for.
#[derive(Debug, clap::Args)]
struct RunTaskArgs {
    /// The input, as text.
    #[arg(required_unless_present = "input_file", conflicts_with = "input_file")]
    input: Option<String>,
    /// Read the input from this file instead (any bytes).
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// The plugin (default: the node's default plugin).
    #[arg(long)]
    plugin: Option<String>,
    /// The node to run it on: host:port, a node ID, or 0xID@host:port. Without it (and
    /// without a selector), this node runs it when it has the plugin, else the scheduler
    /// chooses.
    #[arg(long, conflicts_with_all = ["labels", "max_price_wei", "exclude", "plugin_version"])]
    target: Option<String>,
    /// A label the chosen node must carry, as key=value; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = config::key_value)]
    labels: Vec<(String, String)>,
    /// The most to pay for the task, in wei.
    #[arg(long)]
    max_price_wei: Option<String>,
    /// A node (ID) never to use; repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Versions of the plugin that will do (semver requirement, e.g. ^1.2).
    #[arg(long)]
    plugin_version: Option<String>,
    /// The task's ID (default: a random one).
    #[arg(long)]
    id: Option<String>,
    /// Deadline in milliseconds, from when the task starts.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Run it on several nodes and accept the output this many sign alike (a plugin that
    /// declares itself deterministic).
    #[arg(long, value_name = "K")]
    verify: Option<u32>,
    /// With --verify: the most nodes to ask when some disagree (default K + 1).
    #[arg(long, value_name = "N", requires = "verify")]
    verify_n: Option<u32>,
    /// Wait for the task to finish and print its output.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    node: NodeAddress,
}

fn task_state(text: &str) -> Result<sphere_node::api::TaskState, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| "expected queued, running, succeeded or failed".to_owned())
}

#[derive(Debug, Subcommand)]
enum FileCommand {
    /// Stores a file (encrypted on the node, spread over providers); prints its ID.
    Put {
        /// The file to store.
        path: PathBuf,
        /// Name to store it under (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Provider to store it on (gRPC address); repeat for several replicas.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Number of providers the node picks among its peers, when no --target is given.
        #[arg(long)]
        replicas: Option<u32>,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Reads a file back into PATH, verified and decrypted.
    Get {
        /// The file's ID.
        id: String,
        /// Where to write it.
        path: PathBuf,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Lists the node's files with the health of each replica.
    Ls {
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Deletes a file from every provider.
    Rm {
        /// The file's ID.
        id: String,
        #[command(flatten)]
        node: NodeAddress,
    },
    /// Finds the node's files again on its peers, after it lost its database.
    Recover {
        #[command(flatten)]
        node: NodeAddress,
    },
}

#[derive(Debug, clap::Args)]
struct NodeAddress {
    /// REST address of the node to use.
    #[arg(long = "node", default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Bearer token of the node's REST API (needed when it listens beyond loopback); by default
    /// read from api.token in --data-dir.
    #[arg(long, env = "SPHERE_HTTP__TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of the node, where its api.token is.
    #[arg(long, env = "SPHERE_DATA_DIR", default_value = "sphere-data")]
    data_dir: PathBuf,
}

impl NodeAddress {
    /// Returns a client of the node, with its token if one is given or found.
    fn client(&self) -> NodeClient {
        let token = self
            .token
            .clone()
            .or_else(|| sphere_node::http::access::token_in(&self.data_dir));
        NodeClient::new(&self.url, token.as_deref())
    }
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// JSON configuration file (see config-example.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the database, stored chunks and the default key (`data_dir`).
    #[arg(long)]
    data_dir: Option<String>,
    /// Node key file (`key_file`); by default <data_dir>/node.key, created at first start.
    #[arg(long)]
    key_file: Option<String>,
    /// Address of the node-to-node gRPC server (`grpc.listen`).
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Address of the REST API (`http.listen`).
    #[arg(long)]
    http_listen: Option<String>,
    /// gRPC address (http://host:port) of a plugin run by someone else, used instead of the
    /// configured plugins (`plugins.entries`).
    #[arg(long)]
    plugin_address: Option<String>,
    /// Log filter (`log`), for example `info` or `debug`.
    #[arg(long)]
    log: Option<String>,
    /// A member of the mesh to join through (`mesh.bootstrap`), as host:port; repeatable.
    #[arg(long = "bootstrap", value_name = "HOST:PORT")]
    bootstrap: Vec<String>,
    /// A label for requesters to choose this node by (`labels`), as key=value; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = config::label_override)]
    labels: Vec<(String, String)>,
}

impl NodeArgs {
    fn overrides(&self) -> Vec<(String, String)> {
        [
            ("data_dir", &self.data_dir),
            ("key_file", &self.key_file),
            ("grpc.listen", &self.grpc_listen),
            ("http.listen", &self.http_listen),
            ("log", &self.log),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.clone().map(|value| (field.to_owned(), value)))
        .chain(self.labels.iter().cloned())
        .collect()
    }
}

/// jemalloc, not glibc's malloc: tokio moves tasks between worker threads, so memory is often
/// freed on another thread than the one that took it, and glibc then locks the owner's arena
/// (four futex calls a task at c=32); jemalloc took the task path 1.18x further (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at start (the `_RJEM_MALLOC_CONF` variable still overrides
/// them): one background thread returns freed pages to the system while the node is idle, which
/// no allocation would otherwise trigger, after a second rather than the default ten, so a burst's
/// memory is given back soon after it (bench/memory.sh).
#[unsafe(export_name = "_rjem_malloc_conf")]
static ALLOCATOR_SETTINGS: &[u8; 68] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000\0";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message and its causes, never a backtrace: these errors are for the person who
            // ran the command, whatever RUST_BACKTRACE says.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(args) => run_node(args),
        Command::Keygen { out } => {
            let identity = NodeIdentity::generate();
            identity.write_new(&out)?;
            println!("{}", identity.node_id());
            eprintln!(
                "wrote the key of node {} to {}",
                identity.node_id(),
                out.display()
            );
            Ok(())
        }
        Command::File(command) => runtime()?.block_on(run_file_command(command)),
        Command::Task(command) => runtime()?.block_on(run_task_command(command)),
        Command::Channel(command) => runtime()?.block_on(run_channel_command(command)),
        Command::Health {
            strict,
            timeout_ms,
            node,
        } => runtime()?.block_on(async {
            let health = tokio::time::timeout(
                std::time::Duration::from_millis(timeout_ms),
                node.client().health(),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{} did not answer within {timeout_ms} ms", node.url))??;
            // As the API spells them (`not_serving`).
            let word = |value: serde_json::Value| value.as_str().unwrap_or_default().to_owned();
            let plugins: Vec<String> = health
                .plugins
                .iter()
                .map(|plugin| format!("{} {}", plugin.name, word(serde_json::json!(plugin.health))))
                .collect();
            let status = word(serde_json::json!(health.status));
            println!("{status} {} ({})", health.node_id, plugins.join(", "));
            if strict && health.status != sphere_node::api::NodeHealth::Ok {
                anyhow::bail!("the node is {status}");
            }
            Ok(())
        }),
        Command::Peers { json, node } => runtime()?.block_on(async {
            let peers = node.client().peers().await?;
            if json {
                print_json(&peers)
            } else {
                println!("{}", sphere_node::client::peers_table(&peers));
                Ok(())
            }
        }),
        Command::Payments(PaymentsCommand::Status { node }) => {
            runtime()?.block_on(async { print_json(&node.client().payments().await?) })
        }
        Command::Payments(PaymentsCommand::Redeem { node }) => {
            runtime()?.block_on(async { print_json(&node.client().redeem().await?) })
        }
        Command::Payments(PaymentsCommand::Deploy {
            rpc_url,
            key_file,
            challenge_period_seconds,
            unless_deployed_at,
        }) => {
            let identity = NodeIdentity::load(&key_file)?;
            let address = runtime()?
                .block_on(sphere_node::payments::deploy(
                    &rpc_url,
                    &identity,
                    challenge_period_seconds,
                    unless_deployed_at,
                ))
                .map_err(|error| anyhow::anyhow!(error))?;
            println!("{}", address.to_checksum(None));
            Ok(())
        }
        Command::DemoPlugin => runtime()?
            .block_on(sphere_plugin_hello::run())
            .map_err(|error| anyhow::anyhow!("demo plugin failed: {error}")),
    }
}

fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars(), &args.overrides())?;
    if !args.bootstrap.is_empty() {
        config.mesh.bootstrap = args.bootstrap.clone();
        config.validate()?;
    }
    if let Some(address) = args.plugin_address.clone() {
        config.use_plugin_address(address)?;
    }
    init_logging(&config.log)?;
    for name in config::unknown_variables(std::env::vars()) {
        tracing::warn!("ignoring environment variable {name}: it sets no configuration field");
    }
    runtime()?.block_on(async {
        // Watch the signals before anyone can see the node, so none arrives unhandled.
        let shutdown_requested = shutdown_signal()?;
        let node = Node::start(&config).await?;
        tracing::info!(
            node_id = node.node_id(),
            grpc = %node.grpc_address(),
            http = %node.http_address(),
            plugins = node.plugins().statuses().len(),
            data_dir = %config.data_dir.display(),
            "node started"
        );
        // One line on stdout for people and scripts (the log goes to stderr).
        println!(
            "sphere node {} ready: grpc={} http={}",
            node.node_id(),
            node.grpc_address(),
            node.http_address()
        );
        shutdown_requested.await;
        tracing::info!("shutting down");
        node.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn run_file_command(command: FileCommand) -> anyhow::Result<()> {
    use sphere_node::client::{PutOptions, files_table};
    match command {
        FileCommand::Put {
            path,
            name,
            targets,
            replicas,
            node,
        } => {
            let options = PutOptions {
                name,
                targets,
                replicas,
            };
            let stored = node.client().put(&path, &options).await?;
            println!("{}", stored.id);
            eprintln!("{}", serde_json::to_string_pretty(&stored)?);
        }
        FileCommand::Get { id, path, node } => {
            let bytes = node.client().get(&id, &path).await?;
            eprintln!("wrote {bytes} bytes to {}", path.display());
        }
        FileCommand::Ls { json, node } => {
            let listing = node.client().list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                println!("{}", files_table(&listing));
            }
        }
        FileCommand::Rm { id, node } => {
            node.client().remove(&id).await?;
            eprintln!("deleted {id}");
        }
        FileCommand::Recover { node } => {
            let report = node.client().recover().await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

async fn run_channel_command(command: ChannelCommand) -> anyhow::Result<()> {
    match command {
        ChannelCommand::Open {
            target,
            provider,
            deposit,
            node,
        } => {
            let opened = node
                .client()
                .open_channel(target, provider, &deposit)
                .await?;
            // The ID alone on stdout, for scripts; the whole channel on stderr, for people.
            println!("{}", opened.channel.channel_id);
            eprintln!("{}", serde_json::to_string_pretty(&opened)?);
        }
        ChannelCommand::Topup { id, amount, node } => {
            print_json(&node.client().top_up(&id, &amount).await?)?;
        }
        ChannelCommand::Close { id, node } => {
            print_json(&node.client().close_channel(&id).await?)?;
        }
        ChannelCommand::Recover { node } => {
            print_json(&node.client().recover_channels().await?)?;
        }
        ChannelCommand::Status { id: Some(id), node } => {
            print_json(&node.client().channel(&id).await?)?;
        }
        ChannelCommand::Status { id: None, node } => {
            let payments = node.client().payments().await?;
            print_json(&payments.channels_out.unwrap_or_default())?;
        }
    }
    Ok(())
}

async fn run_task_command(command: TaskCommand) -> anyhow::Result<()> {
    use sphere_node::api::{TargetSelector, TaskRequest, TaskTarget, VerifyRequest};
    match command {
        TaskCommand::Run(arguments) => {
            let RunTaskArgs {
                input,
                input_file,
                plugin,
                target,
                labels,
                max_price_wei,
                exclude,
                plugin_version,
                id,
                timeout_ms,
                verify,
                verify_n,
                wait,
                node,
            } = *arguments;
            let (input, input_base64) = match input_file {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    sphere_node::encoding::text_or_base64(&bytes)
                }
                None => (input, None),
            };
            let selector = TargetSelector {
                labels: labels.into_iter().collect(),
                max_price_wei,
                exclude,
                plugin_version,
            };
            let target = match target {
                Some(node) => Some(TaskTarget::Node(node)),
                None if selector == TargetSelector::default() => None,
                None => Some(TaskTarget::Selector(selector)),
            };
            let client = node.client();
            let accepted = client
                .submit_task(&TaskRequest {
                    target,
                    plugin,
                    id,
                    input,
                    input_base64,
                    timeout_ms,
                    verify: verify.map(|k| VerifyRequest { k, n: verify_n }),
                })
                .await?;
            if !wait {
                println!("{}", accepted.id);
                return Ok(());
            }
            let task = client.wait_for_task(&accepted.id).await?;
            match (task.output, task.output_base64, task.error) {
                (Some(text), _, _) => println!("{text}"),
                (None, Some(encoded), _) => {
                    use std::io::Write;
                    let bytes = sphere_node::encoding::base64_field(&encoded, "output_base64")?;
                    std::io::stdout().write_all(&bytes)?;
                }
                (None, None, Some(error)) => {
                    anyhow::bail!("task {} failed: {}: {}", task.id, error.code, error.message)
                }
                (None, None, None) => println!(),
            }
            Ok(())
        }
        TaskCommand::Status { id, node } => print_json(&node.client().task(&id).await?),
        TaskCommand::Ls {
            state,
            limit,
            json,
            node,
        } => {
            let list = node.client().tasks(state, limit).await?;
            if json {
                print_json(&list)
            } else {
                println!("{}", sphere_node::client::tasks_table(&list));
                Ok(())
            }
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_environment) => from_environment,
        Err(_) => filter.to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).with_context(|| {
        format!("invalid configuration: field `log` is not a valid filter: {filter:?}")
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Starts watching SIGINT and SIGTERM; the returned future completes at the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("could not watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("could not watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
