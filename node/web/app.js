// The Sphere dashboard: one page over the node's public REST API (the same routes as curl and
// the CLI; /openapi.json describes them). No framework and no build step: the node serves this
// file as it is. Text from the API is always set with textContent, never parsed as HTML: file
// names and peers' plugin descriptions come from other people.
"use strict";

const REFRESH_MS = 2000;
const CHART_POINTS = 150;

const state = {
  token: sessionStorage.getItem("sphere-token"),
  tokenPrompt: null,
  page: "overview",
  peers: [],
  plugins: [],
  metrics: null,
  samples: [[], [], []],
  chart: null,
};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

/** Calls the REST API; returns the JSON answer (or text), throws an ApiError with the node's code. */
async function api(method, path, body, { text = false } = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "unreachable", `the node did not answer (${error.message})`);
  }
  if (response.status === 401) {
    await askForToken();
    return api(method, path, body, { text });
  }
  if (!response.ok) throw await errorOf(response);
  return text ? response.text() : response.json();
}

async function errorOf(response) {
  try {
    const answer = await response.json();
    return new ApiError(response.status, answer.error.code, answer.error.message);
  } catch {
    return new ApiError(response.status, "unexpected", `the node answered HTTP ${response.status}`);
  }
}

/** Asks for the token once, however many requests were refused meanwhile. */
function askForToken() {
  if (!state.tokenPrompt) {
    state.tokenPrompt = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog");
      const input = document.getElementById("token-input");
      input.value = "";
      dialog.addEventListener(
        "close",
        () => {
          state.token = input.value.trim();
          sessionStorage.setItem("sphere-token", state.token);
          state.tokenPrompt = null;
          resolve();
        },
        { once: true },
      );
      dialog.showModal();
      input.focus();
    });
  }
  return state.tokenPrompt;
}

// ---------------------------------------------------------------- small helpers

/** Creates an element; children are nodes or strings (always text). */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function $(id) {
  return document.getElementById(id);
}

function fill(container, ...children) {
  container.replaceChildren(...children.flat());
}

function fact(term, ...description) {
  return [el("dt", {}, term), el("dd", {}, ...description)];
}

function badge(word) {
  return el("span", { class: `badge badge-${word}` }, word.replaceAll("_", " "));
}

function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** Formats wei (a decimal string) as ETH, or as wei when tiny; the exact wei in a tooltip. */
function eth(weiText) {
  if (weiText === undefined || weiText === null) return el("span", {}, "–");
  const wei = BigInt(weiText);
  if (wei !== 0n && wei < 10n ** 12n) return el("span", { title: `${weiText} wei` }, `${weiText} wei`);
  const unit = 10n ** 18n;
  const fraction = (wei % unit).toString().padStart(18, "0").slice(0, 6).replace(/0+$/, "");
  const text = `${wei / unit}${fraction ? `.${fraction}` : ""}`;
  return el("span", { title: `${weiText} wei` }, `${text} ETH`);
}

function duration(seconds) {
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${seconds % 60} s`;
  return `${seconds} s`;
}

function shortId(id) {
  return id && id.length > 14 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id || "–";
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---------------------------------------------------------------- problems and notices

const problems = new Map();

/** Shows what went wrong, in words with the node's error code; `where` names the action. */
function showProblem(where, error) {
  const code = error.code ? ` [${error.code}${error.status ? `, HTTP ${error.status}` : ""}]` : "";
  problems.set(where, `${where}: ${error.message}${code}`);
  renderProblems();
}

function clearProblem(where) {
  if (problems.delete(where)) renderProblems();
}

function renderProblems() {
  fill(
    $("problems"),
    [...problems.entries()].map(([where, text]) =>
      el("p", { class: "problem" }, text, " ",
        el("button", { type: "button", class: "link", "aria-label": `Dismiss: ${where}`,
          onclick: () => clearProblem(where) }, "Dismiss"))),
  );
}

function notify(text) {
  fill($("notice"), el("p", {}, text));
}

/** Runs `action`, showing its failure as a problem named `where`; returns its value or undefined. */
async function attempt(where, action) {
  try {
    const value = await action();
    clearProblem(where);
    return value;
  } catch (error) {
    showProblem(where, error);
    return undefined;
  }
}

/** Asks for confirmation in a modal dialog; with `input`, returns what was typed (or null). */
function confirmAction(text, { input, confirm = "Confirm" } = {}) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    fill($("confirm-text"), text);
    $("confirm-ok").textContent = confirm;
    const field = $("confirm-input");
    const label = $("confirm-label");
    field.hidden = label.hidden = !input;
    field.required = Boolean(input);
    field.value = "";
    if (input) {
      label.textContent = input.label;
      field.placeholder = input.placeholder || "";
    }
    dialog.addEventListener(
      "close",
      () => {
        const ok = dialog.returnValue === "ok";
        resolve(input ? (ok ? field.value.trim() : null) : ok);
      },
      { once: true },
    );
    dialog.returnValue = "cancel";
    dialog.showModal();
    (input ? field : $("confirm-ok")).focus();
  });
}

// ---------------------------------------------------------------- pages

const pages = {
  overview: renderOverview,
  plugins: renderPlugins,
  task: renderTaskForm,
  files: renderFiles,
  peers: renderPeers,
  payments: renderPayments,
};

function showPage() {
  const name = location.hash.replace(/^#\/?/, "") || "overview";
  state.page = pages[name] ? name : "overview";
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.dataset.page !== state.page;
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === state.page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  refresh();
}

let refreshing = false;

/** Refreshes what the current page shows, and the task chart's samples. */
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    await Promise.all([sampleMetrics(), pages[state.page]()]);
  } finally {
    refreshing = false;
  }
}

async function renderOverview() {
  const [node, health, storage, payments] = await Promise.all([
    attempt("Node", () => api("GET", "/node")),
    attempt("Health", () => api("GET", "/health")),
    attempt("Storage", () => api("GET", "/storage")),
    attempt("Payments", () => api("GET", "/payments")),
  ]);
  if (node && health) {
    $("header-node").textContent = shortId(node.node_id);
    fill(
      $("node-facts"),
      fact("Node ID", el("span", { class: "mono", id: "node-id" }, node.node_id)),
      fact("Health", badge(health.status),
        health.plugins.filter((plugin) => plugin.health !== "serving")
          .map((plugin) => ` ${plugin.name}: ${plugin.health.replaceAll("_", " ")}`)),
      fact("Version", node.version),
      fact("Up for", duration(node.uptime_seconds)),
      fact("gRPC address", el("span", { class: "mono" }, node.grpc_address)),
      fact("REST address", el("span", { class: "mono" }, node.http_address)),
      fact("Labels", Object.keys(node.labels).length
        ? Object.entries(node.labels).map(([key, value]) => el("span", { class: "badge" }, `${key}=${value}`))
        : "none"),
      fact("API token", node.token_required ? "required" : "not required (loopback)"),
    );
  }
  if (storage) {
    const bar = $("storage-bar");
    bar.max = Math.max(storage.capacity_bytes, 1);
    bar.value = storage.used_bytes;
    $("storage-text").textContent =
      `${bytes(storage.used_bytes)} used of ${bytes(storage.capacity_bytes)} offered, ` +
      `for ${Object.keys(storage.owners).length} owner(s)`;
  }
  if (payments) {
    fill(
      $("payments-facts"),
      payments.enabled
        ? [
            fact("Balance", eth(payments.balance_wei)),
            fact("Spent", eth(payments.spent_wei)),
            fact("Earned", eth(payments.earned_wei)),
            fact("Redeemed", eth(payments.redeemed_wei)),
            fact("Channels", `${payments.channels_out.length} paying, ${payments.channels_in.length} paid`),
          ]
        : fact("Payments", "off"),
    );
  }
  drawChart();
}

/** Reads the task counters from /metrics; the chart shows their rate between samples. */
async function sampleMetrics() {
  const text = await attempt("Metrics", () => api("GET", "/metrics", undefined, { text: true }));
  if (text === undefined) return;
  let count = 0;
  let seconds = 0;
  for (const line of text.split("\n")) {
    const match = line.match(/^sphere_task_duration_seconds_(count|sum)(\{[^}]*\})? ([0-9.eE+-]+)$/);
    if (!match) continue;
    if (match[1] === "count") count += Number(match[3]);
    else seconds += Number(match[3]);
  }
  const now = Date.now() / 1000;
  const previous = state.metrics;
  state.metrics = { now, count, seconds };
  if (!previous) return;
  const tasks = count - previous.count;
  const rate = tasks / (now - previous.now);
  const latencyMs = tasks > 0 ? ((seconds - previous.seconds) / tasks) * 1000 : null;
  const [times, rates, latencies] = state.samples;
  times.push(now);
  rates.push(rate);
  latencies.push(latencyMs);
  if (times.length > CHART_POINTS) state.samples.forEach((series) => series.shift());
  $("task-rate").textContent =
    `${rate.toFixed(1)} tasks/s` + (latencyMs === null ? "" : `, mean latency ${latencyMs.toFixed(2)} ms`);
}

function drawChart() {
  const container = $("task-chart");
  if (typeof uPlot === "undefined" || container.offsetParent === null) return;
  const width = Math.max(container.clientWidth, 280);
  if (!state.chart) {
    state.chart = new uPlot(
      {
        width,
        height: 220,
        // The window the samples can fill, even before they do.
        scales: { x: { time: true, range: (_chart, _min, max) => [max - (CHART_POINTS * REFRESH_MS) / 1000, max] } },
        series: [
          {},
          { label: "tasks/s", stroke: "#2563eb", width: 2 },
          { label: "latency ms", stroke: "#d97706", width: 2, scale: "ms" },
        ],
        axes: [{}, { label: "tasks/s" }, { side: 1, scale: "ms", label: "ms", grid: { show: false } }],
      },
      state.samples,
      container,
    );
  } else {
    if (state.chart.width !== width) state.chart.setSize({ width, height: 220 });
    state.chart.setData(state.samples);
  }
}

async function renderPlugins() {
  const answer = await attempt("Plugins", () => api("GET", "/plugins"));
  if (!answer) return;
  state.plugins = answer.plugins;
  fill(
    document.querySelector("#plugins-table tbody"),
    answer.plugins.map((plugin) =>
      el("tr", { "data-plugin": plugin.name },
        el("th", { scope: "row" }, plugin.name, plugin.default ? " (default)" : ""),
        el("td", { class: "health" }, badge(plugin.health)),
        el("td", {}, plugin.version || "–"),
        el("td", {}, `${plugin.in_flight} / ${plugin.queued}`),
        el("td", {}, `${plugin.succeeded} / ${plugin.failed}`),
        el("td", {}, plugin.restarts),
        el("td", {}, plugin.problem || "–"))),
  );
}

async function loadPeers() {
  const answer = await attempt("Peers", () => api("GET", "/peers"));
  if (answer) state.peers = answer.peers;
  return state.peers;
}

async function renderPeers() {
  const peers = await loadPeers();
  fill(
    document.querySelector("#peers-table tbody"),
    peers.length === 0
      ? el("tr", {}, el("td", { colspan: 10 },
          "No peers yet: give this node a member to join through (--bootstrap host:port) or `peers`."))
      : peers.map((peer) =>
          el("tr", { "data-peer": peer.id || peer.addresses.grpc },
            el("th", { scope: "row", class: "mono" }, peer.id || "–"),
            el("td", { class: "mono" }, peer.addresses.grpc),
            el("td", { class: "state" }, badge(peer.state), peer.error ? ` ${peer.error.message}` : ""),
            el("td", { class: "seen" }, peer.last_seen_ms === null ? "–" : `${(peer.last_seen_ms / 1000).toFixed(1)} s ago`),
            el("td", { class: "rtt" }, peer.rtt_ms === null ? "–" : `${peer.rtt_ms.toFixed(2)} ms`),
            el("td", {}, peer.version || "–"),
            el("td", {}, Object.entries(peer.labels).map(([key, value]) => `${key}=${value}`).join(", ") || "–"),
            el("td", { class: "plugins" }, peer.plugins.map((plugin) => pluginWithLoad(peer, plugin)).join(", ") || "–"),
            el("td", {}, capacityText(peer.capacity)),
            el("td", { class: "prices" }, pricesText(peer)))),
  );
}

function pluginWithLoad(peer, plugin) {
  const load = peer.load && peer.load.plugins[plugin.name];
  const busy = load ? ` (${load.in_flight} running, ${load.queued} queued)` : "";
  return `${plugin.name} ${plugin.version}${busy}`;
}

function capacityText(capacity) {
  if (!capacity) return "–";
  return `${capacity.cpu_cores} cores, ${bytes(capacity.memory_bytes)} memory, ` +
    `${bytes(capacity.free_disk_bytes)} free of ${bytes(capacity.disk_bytes)}`;
}

function pricesText(peer) {
  if (peer.payments === null) return "–";
  if (!peer.payments) return "free";
  if (!peer.prices) return "paid";
  return `${peer.prices.task_wei} wei/task, ${peer.prices.storage_gib_day_wei} wei/GiB·day`;
}

// ---------------------------------------------------------------- run a task

let taskFormReady = false;

// The target option that lets the requester's scheduler choose among the mesh's members.
const ANY_NODE = "*";

async function renderTaskForm() {
  await Promise.all([loadPeers(), renderPlugins(), renderRecentTasks()]);
  // Refilled as members come and go, keeping what is chosen.
  const target = $("task-target");
  const choices = state.peers.filter((peer) => peer.state !== "dead");
  const values = ["", ANY_NODE, ...choices.map(targetOf)];
  const shown = [...target.options].map((option) => option.value);
  if (values.join("\n") !== shown.join("\n")) {
    const chosen = target.value;
    fill(
      target,
      el("option", { value: "" }, "This node"),
      el("option", { value: ANY_NODE }, "Any node (the scheduler chooses)"),
      choices.map((peer) => el("option", { value: targetOf(peer) },
        `${peer.addresses.grpc} (${shortId(peer.id)})`)),
    );
    target.value = values.includes(chosen) ? chosen : "";
  }
  if (!taskFormReady) {
    taskFormReady = true;
    fillPluginChoices();
  }
}

// The peer as a target: by node ID at its address, so an impostor there is refused.
function targetOf(peer) {
  return peer.id ? `${peer.id}@${peer.addresses.grpc}` : peer.addresses.grpc;
}

function fillPluginChoices() {
  const address = $("task-target").value;
  const names = address === ANY_NODE
    ? [...new Set(state.peers.flatMap((peer) => peer.plugins.map((plugin) => plugin.name)))].sort()
    : address
      ? (state.peers.find((peer) => targetOf(peer) === address)?.plugins || []).map((plugin) => plugin.name)
      : state.plugins.map((plugin) => plugin.name);
  fill($("task-plugin"), el("option", { value: "" }, "The target's default"),
    names.map((name) => el("option", { value: name }, name)));
}

/** The target the form asks for: a node, a selector ("Any node" and labels), or none. */
function taskTarget() {
  const other = $("task-target-other").value.trim();
  if (other) return other;
  const chosen = $("task-target").value;
  if (chosen !== ANY_NODE) return chosen || undefined;
  const labels = {};
  for (const pair of $("task-labels").value.split(",").map((text) => text.trim()).filter(Boolean)) {
    const [key, ...value] = pair.split("=");
    labels[key.trim()] = value.join("=").trim();
  }
  return { labels };
}

/** Hands the task to the node in the background, then follows it until it is over. */
async function runTask(event) {
  event.preventDefault();
  const result = $("task-result");
  const button = event.submitter || event.target.querySelector("button");
  const request = {};
  const target = taskTarget();
  if (target) request.target = target;
  const plugin = $("task-plugin").value;
  if (plugin) request.plugin = plugin;
  const file = $("task-file").files[0];
  if (file) request.input_base64 = await base64Of(file);
  else request.input = $("task-input").value;
  fill(result, el("p", {}, "Queued…"));
  button.disabled = true;
  try {
    const accepted = await api("POST", "/tasks", request);
    const task = await followTask(accepted.id, (current) =>
      fill(result, el("p", {}, current.state === "running" ? "Running…" : "Queued…")));
    renderRecentTasks();
    if (task.state === "failed") {
      fill(result, el("p", { class: "outcome-failed", role: "alert" },
        `Failed: ${task.error.message} [${task.error.code}] (task ${task.id}).`));
      return;
    }
    const ms = task.finished_at_ms - task.started_at_ms;
    fill(
      result,
      el("p", { class: "outcome-ok" }, `Succeeded on plugin ${task.plugin} of node ${shortId(task.node)} in ${ms} ms (task ${task.id}).`),
      task.output !== undefined
        ? [el("h3", {}, "Output"), el("pre", { id: "task-output", tabindex: 0 }, task.output)]
        : el("button", { type: "button", onclick: () =>
            saveBlob(new Blob([bytesOfBase64(task.output_base64)]), `task-${task.id}.out`) },
          "Download the output (binary)"),
    );
  } catch (error) {
    fill(result, el("p", { class: "outcome-failed", role: "alert" },
      `Failed: ${error.message} [${error.code}, HTTP ${error.status}]`));
  } finally {
    button.disabled = false;
  }
}

/** Polls a background task until it is over, telling `onChange` of each state on the way. */
async function followTask(id, onChange) {
  let pause = 50;
  for (;;) {
    const task = await api("GET", `/tasks/${encodeURIComponent(id)}`);
    if (task.state === "succeeded" || task.state === "failed") return task;
    onChange(task);
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 1000);
  }
}

async function renderRecentTasks() {
  const answer = await attempt("Tasks", () => api("GET", "/tasks?limit=20"));
  if (!answer) return;
  fill(
    document.querySelector("#tasks-table tbody"),
    answer.tasks.length === 0
      ? el("tr", {}, el("td", { colspan: 7 }, "No background tasks yet."))
      : answer.tasks.map((task) =>
          el("tr", { "data-task": task.id },
            el("th", { scope: "row", class: "mono" }, task.id),
            el("td", {}, badge(task.state)),
            el("td", {}, new Date(task.created_at_ms).toLocaleString()),
            el("td", {}, task.finished_at_ms && task.started_at_ms
              ? `${task.finished_at_ms - task.started_at_ms} ms` : "–"),
            el("td", {}, task.plugin || "default"),
            el("td", { class: "mono" }, task.node ? shortId(task.node) : "–"),
            el("td", {}, task.error ? `${task.error.code}: ${task.error.message}` : ""))),
  );
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function bytesOfBase64(text) {
  return Uint8Array.from(atob(text), (character) => character.charCodeAt(0));
}

// ---------------------------------------------------------------- files

async function renderFiles() {
  const answer = await attempt("Files", () => api("GET", "/files"));
  if (!answer) return;
  fill(
    document.querySelector("#files-table tbody"),
    answer.files.length === 0
      ? el("tr", {}, el("td", { colspan: 6 }, "No files yet."))
      : answer.files.map((file) =>
          el("tr", { "data-file": file.id },
            el("th", { scope: "row" }, file.name, el("br"), el("small", { class: "mono" }, file.id)),
            el("td", {}, bytes(file.size)),
            el("td", {}, new Date(file.created_at).toLocaleString()),
            el("td", { class: "health" }, badge(file.health)),
            el("td", {}, el("ul", { class: "replicas" }, file.replicas.map((replica) =>
              el("li", {}, el("span", { class: "mono" }, replica.target), " ", badge(replica.health),
                replica.last_audit ? ` ${new Date(replica.last_audit).toLocaleTimeString()}` : "",
                replica.last_audit_error ? ` (${replica.last_audit_error})` : "")))),
            el("td", { class: "actions" },
              el("button", { type: "button", onclick: () => download(file),
                "aria-label": `Download ${file.name}` }, "Download"),
              el("button", { type: "button", class: "danger", onclick: () => removeFile(file),
                "aria-label": `Delete ${file.name}` }, "Delete")))),
  );
}

function upload(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  if (!file) return;
  const targets = $("upload-targets").value.split(",").map((text) => text.trim()).filter(Boolean);
  const query = targets.length
    ? `targets=${encodeURIComponent(targets.join(","))}`
    : `replicas=${encodeURIComponent($("upload-replicas").value)}`;
  const progress = $("upload-progress");
  const status = $("upload-status");
  const button = event.target.querySelector("button[type=submit]");
  progress.hidden = false;
  progress.value = 0;
  button.disabled = true;
  status.textContent = `Storing ${file.name}…`;
  // XMLHttpRequest, not fetch: only it reports upload progress. The body streams from disk.
  const request = new XMLHttpRequest();
  request.open("PUT", `/files/${encodeURIComponent(file.name)}?${query}`);
  for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
  request.upload.onprogress = (progressEvent) => {
    if (progressEvent.lengthComputable) progress.value = (progressEvent.loaded / progressEvent.total) * 100;
  };
  request.onload = async () => {
    button.disabled = false;
    if (request.status === 401) {
      await askForToken();
      status.textContent = "Token set; store the file again.";
      return;
    }
    let answer = null;
    try {
      answer = JSON.parse(request.responseText);
    } catch {
      answer = null;
    }
    if (request.status === 201 && answer) {
      progress.value = 100;
      status.textContent = `Stored ${answer.name} (${bytes(answer.size)}) on ${answer.replicas.length} provider(s).`;
      clearProblem("Store");
      renderFiles();
    } else {
      status.textContent = "Storing failed.";
      showProblem("Store", answer?.error
        ? new ApiError(request.status, answer.error.code, answer.error.message)
        : new ApiError(request.status, "unexpected", `the node answered HTTP ${request.status}`));
    }
  };
  request.onerror = () => {
    button.disabled = false;
    status.textContent = "Storing failed.";
    showProblem("Store", new ApiError(0, "unreachable", "the connection to the node broke"));
  };
  request.send(file);
}

async function download(file) {
  await attempt(`Download ${file.name}`, async () => {
    const response = await fetch(`/files/${encodeURIComponent(file.id)}`, { headers: authHeaders() });
    if (!response.ok) throw await errorOf(response);
    const blob = await response.blob();
    if (blob.size !== file.size) {
      throw new ApiError(response.status, "incomplete", `got ${blob.size} of ${file.size} bytes`);
    }
    saveBlob(blob, file.name);
    notify(`Downloaded ${file.name}.`);
  });
}

async function removeFile(file) {
  if (!(await confirmAction(`Delete ${file.name} from every provider? This cannot be undone.`,
    { confirm: "Delete" }))) return;
  const deleted = await attempt(`Delete ${file.name}`, () =>
    api("DELETE", `/files/${encodeURIComponent(file.id)}`));
  if (deleted) notify(`Deleted ${file.name}.`);
  renderFiles();
}

async function recoverFiles() {
  const report = await attempt("Recover", () => api("POST", "/files/recover"));
  if (report) {
    notify(`Asked ${report.providers_asked} provider(s), ${report.providers_answered} answered: ` +
      `${report.files_found} file(s) found, ${report.files_restored} restored.`);
    renderFiles();
  }
}

// ---------------------------------------------------------------- payments

async function renderPayments() {
  const payments = await attempt("Payments", () => api("GET", "/payments"));
  if (!payments) return;
  $("payments-off").hidden = payments.enabled;
  $("payments-on").hidden = !payments.enabled;
  if (!payments.enabled) return;
  fill(
    $("payments-summary"),
    fact("Account", el("span", { class: "mono" }, payments.address)),
    fact("Balance", eth(payments.balance_wei)),
    fact("Chain", `${payments.chain_id}, contract `, el("span", { class: "mono" }, payments.contract)),
    fact("Spent", eth(payments.spent_wei)),
    fact("Earned", eth(payments.earned_wei)),
    fact("Redeemed", eth(payments.redeemed_wei)),
    fact("Waiting to be redeemed", eth(payments.pending_wei)),
  );
  fill(
    document.querySelector("#channels-out tbody"),
    payments.channels_out.length === 0
      ? el("tr", {}, el("td", { colspan: 7 }, "No channels yet."))
      : payments.channels_out.map((channel) =>
          el("tr", { "data-channel": channel.channel_id },
            el("th", { scope: "row", class: "mono", title: channel.channel_id }, shortId(channel.channel_id)),
            el("td", { class: "mono", title: channel.provider }, shortId(channel.provider)),
            el("td", {}, badge(channel.phase)),
            el("td", { class: "deposit" }, eth(channel.deposit_wei)),
            el("td", {}, eth(channel.spent_wei)),
            el("td", {}, eth(channel.remaining_wei)),
            el("td", { class: "actions" },
              channel.phase === "open"
                ? el("button", { type: "button", onclick: () => topUp(channel) }, "Top up")
                : null,
              channel.phase !== "closed"
                ? el("button", { type: "button", class: "danger", onclick: () => closeChannel(channel) },
                    channel.phase === "closing" ? "Finish closing" : "Close")
                : null))),
  );
  fill(
    document.querySelector("#channels-in tbody"),
    payments.channels_in.length === 0
      ? el("tr", {}, el("td", { colspan: 6 }, "No channel pays this node yet."))
      : payments.channels_in.map((channel) =>
          el("tr", {},
            el("th", { scope: "row", class: "mono", title: channel.channel_id }, shortId(channel.channel_id)),
            el("td", { class: "mono", title: channel.requester }, shortId(channel.requester)),
            el("td", {}, eth(channel.deposit_wei)),
            el("td", {}, eth(channel.earned_wei)),
            el("td", {}, eth(channel.redeemed_wei)),
            el("td", {}, eth(channel.pending_wei)))),
  );
}

async function openChannel(event) {
  event.preventDefault();
  const target = $("open-target").value.trim();
  const provider = $("open-provider").value.trim();
  const deposit = $("open-deposit").value.trim();
  const who = target || provider;
  if (!(await confirmAction(`Open a channel to ${who} with a deposit of ${deposit}? ` +
    "The deposit leaves this node's account in an on-chain transaction.", { confirm: "Open" }))) return;
  const request = { deposit };
  if (target) request.target = target;
  if (provider) request.provider = provider;
  const opened = await attempt("Open a channel", () => api("POST", "/channels", request));
  if (opened) {
    notify(`Opened channel ${opened.channel_id} (transaction ${opened.transaction.tx}).`);
    event.target.reset();
  }
  renderPayments();
}

async function topUp(channel) {
  const amount = await confirmAction(`Add to the deposit of channel ${channel.channel_id}:`,
    { input: { label: "Amount", placeholder: "0.01eth" }, confirm: "Top up" });
  if (!amount) return;
  const changed = await attempt("Top up", () =>
    api("POST", `/channels/${channel.channel_id}/topup`, { amount }));
  if (changed) notify(`Channel ${shortId(channel.channel_id)} now holds ${changed.deposit_wei} wei.`);
  renderPayments();
}

async function closeChannel(channel) {
  const text = channel.phase === "closing"
    ? `Finish closing channel ${channel.channel_id} and take back what is left?`
    : `Close channel ${channel.channel_id}? The provider can redeem what it earned during the ` +
      "challenge period; then close again to take back the rest.";
  if (!(await confirmAction(text, { confirm: "Close" }))) return;
  const changed = await attempt("Close", () => api("POST", `/channels/${channel.channel_id}/close`));
  if (changed) notify(`Channel ${shortId(channel.channel_id)} is ${changed.phase}.`);
  renderPayments();
}

async function redeem() {
  if (!(await confirmAction("Redeem every voucher earned so far, now? Each channel costs a transaction.",
    { confirm: "Redeem" }))) return;
  const answer = await attempt("Redeem", () => api("POST", "/payments/redeem"));
  if (answer) {
    notify(`Redeemed ${answer.redeemed.length} channel(s)` +
      (answer.failed.length ? `; ${answer.failed.length} failed: ` +
        answer.failed.map((failure) => `${failure.code}: ${failure.message}`).join("; ") : "."));
  }
  renderPayments();
}

// ---------------------------------------------------------------- start

function start() {
  window.addEventListener("hashchange", showPage);
  $("task-form").addEventListener("submit", runTask);
  $("task-target").addEventListener("change", fillPluginChoices);
  $("upload-form").addEventListener("submit", upload);
  $("recover-files").addEventListener("click", recoverFiles);
  $("open-channel-form").addEventListener("submit", openChannel);
  $("redeem").addEventListener("click", redeem);
  window.addEventListener("resize", drawChart);
  showPage();
  const tick = async () => {
    if (!document.hidden && !state.tokenPrompt) await refresh();
    setTimeout(tick, REFRESH_MS);
  };
  setTimeout(tick, REFRESH_MS);
}

start();
