//! The `sphere file`, `task`, `channel`, `payments` and `peers` commands: a client of a node's
//! REST API, speaking the types of [`crate::api`], with progress bars on transfers.
//!
//! Progress goes to stderr and results to stdout, so `id=$(sphere file put photo.jpg)` works.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::api::{
    Amount, ChannelChange, ChannelInfo, DeletedFile, ErrorAnswer, FileInfo, FileList, HealthAnswer,
    OpenChannelRequest, PaymentsAnswer, PeerList, RecoveredChannels, RecoveryReport, RedeemAnswer,
    TaskAccepted, TaskList, TaskRequest, TaskState, TaskStatus, TopUpRequest,
};
use crate::encoding::path_segment;

/// Where a new file goes, as the command line says.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Name to store the file under; the file name of the path by default.
    pub name: Option<String>,
    /// Providers to store on.
    pub targets: Vec<String>,
    /// How many providers the node picks, when none are named.
    pub replicas: Option<u32>,
}

/// A client of one node's REST API.
#[derive(Debug, Clone)]
pub struct NodeClient {
    base: String,
    http: reqwest::Client,
}

impl NodeClient {
    /// Returns a client of the node at `base` (for example `http://127.0.0.1:3000`) that sends
    /// `token` as its bearer token, if given.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(mut value) = token.and_then(|token| {
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).ok()
        }) {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        Self { base, http }
    }

    /// Streams the file at `path` to the node; returns the stored file.
    pub async fn put(&self, path: &Path, options: &PutOptions) -> anyhow::Result<FileInfo> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let size = file.metadata().await?.len();
        let name = match &options.name {
            Some(name) => name.clone(),
            None => path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .context("the path has no file name; give one with --name")?,
        };
        let progress = transfer_bar(size, "storing");
        let counted = progress.clone();
        let body =
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    counted.inc(chunk.len() as u64);
                }
            });
        let mut query: Vec<(&str, String)> = Vec::new();
        if !options.targets.is_empty() {
            query.push(("targets", options.targets.join(",")));
        }
        if let Some(replicas) = options.replicas {
            query.push(("replicas", replicas.to_string()));
        }
        let url = format!("{}/files/{}", self.base, path_segment(&name));
        let response = self
            .http
            .put(url)
            .query(&query)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        progress.finish_and_clear();
        answer(response).await
    }

    /// Streams file `id` into `path` (through `<path>.part`, renamed when complete).
    pub async fn get(&self, id: &str, path: &Path) -> anyhow::Result<u64> {
        let response = self
            .http
            .get(format!("{}/files/{}", self.base, path_segment(id)))
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        if !response.status().is_success() {
            return Err(failure(response).await);
        }
        let size = response.content_length().unwrap_or(0);
        let progress = transfer_bar(size, "reading");
        let partial = partial_path(path);
        let mut output = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut body = response.bytes_stream();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    drop(output);
                    tokio::fs::remove_file(&partial).await.ok();
                    bail!("the transfer broke off after {written} of {size} bytes: {error}");
                }
            };
            output.write_all(&chunk).await?;
            written += chunk.len() as u64;
            progress.set_position(written);
        }
        output.sync_all().await?;
        progress.finish_and_clear();
        if written != size {
            tokio::fs::remove_file(&partial).await.ok();
            bail!("the node sent {written} of {size} bytes");
        }
        tokio::fs::rename(&partial, path).await?;
        Ok(written)
    }

    /// Returns the node's files.
    pub async fn list(&self) -> anyhow::Result<FileList> {
        self.call(Method::GET, "/files", None::<&()>).await
    }

    /// Deletes file `id` everywhere.
    pub async fn remove(&self, id: &str) -> anyhow::Result<DeletedFile> {
        let path = format!("/files/{}", path_segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Asks the node to find its files again on its peers.
    pub async fn recover(&self) -> anyhow::Result<RecoveryReport> {
        self.call(Method::POST, "/files/recover", None::<&()>).await
    }

    /// Returns the node's health.
    pub async fn health(&self) -> anyhow::Result<HealthAnswer> {
        self.call(Method::GET, "/health", None::<&()>).await
    }

    /// Returns the peers the node knows.
    pub async fn peers(&self) -> anyhow::Result<PeerList> {
        self.call(Method::GET, "/peers", None::<&()>).await
    }

    /// Hands the node a task to run in the background.
    pub async fn submit_task(&self, request: &TaskRequest) -> anyhow::Result<TaskAccepted> {
        self.call(Method::POST, "/tasks", Some(request)).await
    }

    /// Returns background task `id`.
    pub async fn task(&self, id: &str) -> anyhow::Result<TaskStatus> {
        let path = format!("/tasks/{}", path_segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Polls background task `id` until it is over; returns it then.
    pub async fn wait_for_task(&self, id: &str) -> anyhow::Result<TaskStatus> {
        let mut pause = Duration::from_millis(50);
        loop {
            let task = self.task(id).await?;
            if task.state.is_finished() {
                return Ok(task);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Returns up to `limit` background tasks, newest first, in `state` if given.
    pub async fn tasks(
        &self,
        state: Option<TaskState>,
        limit: Option<u32>,
    ) -> anyhow::Result<TaskList> {
        let mut query = Vec::new();
        if let Some(state) = state {
            query.push(format!(
                "state={}",
                serde_json::to_value(state)?.as_str().unwrap_or_default()
            ));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let path = if query.is_empty() {
            "/tasks".to_owned()
        } else {
            format!("/tasks?{}", query.join("&"))
        };
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Returns the node's payments.
    pub async fn payments(&self) -> anyhow::Result<PaymentsAnswer> {
        self.call(Method::GET, "/payments", None::<&()>).await
    }

    /// Redeems every unredeemed voucher now.
    pub async fn redeem(&self) -> anyhow::Result<RedeemAnswer> {
        self.call(Method::POST, "/payments/redeem", None::<&()>)
            .await
    }

    /// Opens a channel to the provider at `target` (or with node ID `provider`).
    pub async fn open_channel(
        &self,
        target: Option<String>,
        provider: Option<String>,
        deposit: &str,
    ) -> anyhow::Result<ChannelChange> {
        let request = OpenChannelRequest {
            target,
            provider,
            deposit: Some(Amount::Text(deposit.to_owned())),
        };
        self.call(Method::POST, "/channels", Some(&request)).await
    }

    /// Adds `amount` to channel `id`'s deposit.
    pub async fn top_up(&self, id: &str, amount: &str) -> anyhow::Result<ChannelChange> {
        let request = TopUpRequest {
            amount: Some(Amount::Text(amount.to_owned())),
        };
        let path = format!("/channels/{}/topup", path_segment(id));
        self.call(Method::POST, &path, Some(&request)).await
    }

    /// Asks to close channel `id`, or closes it after the challenge period.
    pub async fn close_channel(&self, id: &str) -> anyhow::Result<ChannelChange> {
        let path = format!("/channels/{}/close", path_segment(id));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Returns channel `id`.
    pub async fn channel(&self, id: &str) -> anyhow::Result<ChannelInfo> {
        let path = format!("/channels/{}", path_segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Finds the node's channels again on the chain.
    pub async fn recover_channels(&self) -> anyhow::Result<RecoveredChannels> {
        self.call(Method::POST, "/channels/recover", None::<&()>)
            .await
    }

    /// Sends `body` (if any) as JSON to `path`; returns the answer, or the node's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        answer(response).await
    }
}

/// Returns the body of a successful answer, or the node's error as an error.
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    response
        .json()
        .await
        .context("the node's answer is not what this version of sphere expects")
}

/// Returns the error a failed answer carries: its status, code and message.
async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    match response.json::<ErrorAnswer>().await {
        Ok(answer) => anyhow::anyhow!("{status}: {}: {}", answer.error.code, answer.error.message),
        Err(_) => anyhow::anyhow!("{status}, with a body that is not a Sphere error"),
    }
}

fn transfer_bar(size: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(size).with_message(verb.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Formats `GET /tasks` as a table for people.
pub fn tasks_table(list: &TaskList) -> String {
    let mut lines = vec![format!(
        "{:<32}  {:<9}  {:<24}  {:>9}  {:<16}  {:<42}  {}",
        "ID", "STATE", "CREATED", "TOOK", "PLUGIN", "NODE", "ERROR"
    )];
    for task in &list.tasks {
        let took = match (task.started_at_ms, task.finished_at_ms) {
            (Some(started), Some(finished)) => {
                format!("{} ms", finished.saturating_sub(started))
            }
            _ => "-".to_owned(),
        };
        let state = serde_json::to_value(task.state)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default();
        lines.push(format!(
            "{:<32}  {:<9}  {:<24}  {:>9}  {:<16}  {:<42}  {}",
            printable(&task.id),
            state,
            time_of(task.created_at_ms),
            took,
            printable(task.plugin.as_deref().unwrap_or("-")),
            task.node.as_deref().unwrap_or("-"),
            task.error
                .as_ref()
                .map(|error| format!("{}: {}", error.code, printable(&error.message)))
                .unwrap_or_default(),
        ));
    }
    lines.join("\n")
}

/// Milliseconds since the epoch as an RFC 3339 time, to the second.
fn time_of(milliseconds: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(milliseconds))
        .to_string()
}

/// Formats `GET /files` as a table for people.
pub fn files_table(listing: &FileList) -> String {
    let mut lines = vec![format!(
        "{:<32}  {:>12}  {:<24}  {:<8}  {:<30}  {}",
        "ID", "SIZE", "CREATED", "HEALTH", "NAME", "REPLICAS"
    )];
    for file in &listing.files {
        let replicas: Vec<String> = file
            .replicas
            .iter()
            .map(|replica| format!("{}:{}", printable(&replica.target), label(&replica.health)))
            .collect();
        lines.push(format!(
            "{:<32}  {:>12}  {:<24}  {:<8}  {:<30}  {}",
            printable(&file.id),
            file.size,
            printable(&file.created_at),
            label(&file.health),
            printable(&file.name),
            replicas.join(" ")
        ));
    }
    lines.join("\n")
}

/// Formats `GET /peers` as a table for people: one line per peer, the plugins with their
/// running and queued tasks.
pub fn peers_table(list: &PeerList) -> String {
    let mut lines = vec![format!(
        "{:<7}  {:<42}  {:<21}  {:>8}  {:>7}  {:<30}  {}",
        "STATE", "ID", "ADDRESS", "SEEN", "RTT", "PLUGINS (RUNNING/QUEUED)", "LABELS"
    )];
    for peer in &list.peers {
        let plugins: Vec<String> = peer
            .plugins
            .iter()
            .map(|plugin| {
                let load = peer
                    .load
                    .as_ref()
                    .and_then(|load| load.plugins.get(&plugin.name))
                    .map_or(String::new(), |load| {
                        format!(" {}/{}", load.in_flight, load.queued)
                    });
                printable(&format!("{}{load}", plugin.name))
            })
            .collect();
        let labels: Vec<String> = peer
            .labels
            .iter()
            .map(|(key, value)| printable(&format!("{key}={value}")))
            .collect();
        let or_dash = |text: Option<String>| text.unwrap_or_else(|| "-".to_owned());
        lines.push(format!(
            "{:<7}  {:<42}  {:<21}  {:>8}  {:>7}  {:<30}  {}",
            label(&peer.state),
            or_dash(peer.id.clone()),
            printable(&peer.addresses.grpc),
            or_dash(
                peer.last_seen_ms
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            ),
            or_dash(peer.rtt_ms.map(|ms| format!("{ms:.1}ms"))),
            plugins.join(", "),
            labels.join(" "),
        ));
    }
    lines.join("\n")
}

/// Returns the JSON word for one of the API's enum values (`ok`, `degraded`, ...).
fn label(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        _ => "?".to_owned(),
    }
}

/// Returns `text` with control and bidirectional-formatting characters escaped (`\u{1b}`), so
/// that a name chosen by someone else cannot drive or disguise the terminal's output.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|character| {
            let disguising = matches!(
                character,
                '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            );
            if character.is_control() || disguising {
                character.escape_unicode().to_string()
            } else {
                character.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("ok name.txt"), "ok name.txt");
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\u{a}");
        assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }

    #[test]
    fn names_are_encoded_for_paths() {
        assert_eq!(path_segment("a b/c.txt"), "a%20b%2Fc.txt");
        assert_eq!(path_segment("plain-name_1.bin"), "plain-name_1.bin");
    }

    #[test]
    fn the_peer_table_shows_state_plugins_with_their_load_and_labels() {
        let list: PeerList = serde_json::from_value(serde_json::json!({"peers": [{
            "id": "0x00000000000000000000000000000000000000aB", "state": "suspect",
            "source": "mesh",
            "addresses": {"grpc": "127.0.0.1:8082", "http": null, "gossip": null},
            "version": "0.1.0", "labels": {"region": "eu"},
            "plugins": [{"name": "hello", "version": "1", "description": "",
                "input_content_type": "", "output_content_type": "", "deterministic": true,
                "idempotent": true, "serving": true}],
            "payments": false, "prices": null, "capacity": null,
            "load": {"plugins": {"hello": {"in_flight": 2, "queued": 5}}},
            "last_seen_ms": 2500, "rtt_ms": 0.31, "error": null
        }]}))
        .expect("a peer list");
        let table = peers_table(&list);
        for shown in [
            "suspect",
            "127.0.0.1:8082",
            "hello 2/5",
            "region=eu",
            "2.5s",
            "0.3ms",
        ] {
            assert!(table.contains(shown), "{shown} in {table}");
        }
    }

    #[test]
    fn the_table_lists_files_with_replica_health() {
        let listing: FileList = serde_json::from_value(serde_json::json!({"files": [{
            "id": "abc", "size": 12, "created_at": "2026-11-29T12:00:00Z", "name": "n",
            "target": "127.0.0.1:8082", "provider_id": "0x01", "health": "ok",
            "replicas_wanted": 1,
            "replicas": [{"target": "127.0.0.1:8082", "provider_id": "0x01", "health": "ok",
                "last_audit": null, "last_audit_error": null}]
        }]}))
        .expect("a file list");
        let table = files_table(&listing);
        assert!(
            table.contains("abc") && table.contains("127.0.0.1:8082:ok"),
            "{table}"
        );
    }
}
