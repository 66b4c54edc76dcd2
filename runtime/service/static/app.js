"use strict";
// The stint dashboard: plain JS, no framework, no build. Every value from the API is
// put on the page as text (never as HTML). The token, if the node has one, arrives
// once as ?token=, is kept in sessionStorage for this tab and sent as a header.

const TERMINAL = new Set(["Succeeded", "Failed", "Stopped", "Expired", "Invalid"]);
const INSTANCE_STATES = [
  ["Starting", "Starting"], ["Ready", "Idle"], ["Busy", "Busy"],
  ["Frozen", "Frozen"], ["Stopping", "Stopping"],
];
const REFRESH_MS = 1500;
const PAGE_SIZE = 25;

const state = {
  token: null,
  pages: [null],        // cursors of the pages visited: [newest, older, ...]
  seen: new Set(),      // task ids already shown, so new ones can be highlighted
  timer: null,
  task: null,           // the task page: {id, abort, events}
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "color") node.style.setProperty("--c", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// --- the API ---------------------------------------------------------------------

function takeToken() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem("stint.token", given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  state.token = sessionStorage.getItem("stint.token");
  if (state.token) $("docs-link").href = "/docs?token=" + encodeURIComponent(state.token);
}

function headers(extra) {
  const out = Object.assign({ Accept: "application/json" }, extra || {});
  if (state.token) out.Authorization = "Bearer " + state.token;
  return out;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || "HTTP " + status);
    this.status = status;
    this.type = problem.type || "";
  }
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, Object.assign({ headers: headers(), cache: "no-store" }, options));
  } catch (error) {
    connection("down", "offline");
    throw error;
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    if (response.status === 401) {
      connection("down", "token needed");
      banner("This node needs a token: open the dashboard as /?token=YOUR_TOKEN.");
    } else if (response.status >= 500) {
      connection("down", "unavailable");
    }
    throw new ApiError(response.status, problem);
  }
  connection("ok", "live");
  return response.json();
}

function connection(kind, text) {
  $("conn").dataset.state = kind;
  $("conn-text").textContent = text;
  if (kind === "ok") banner(null);
}

function banner(text) {
  $("banner").hidden = !text;
  $("banner").textContent = text || "";
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
async function sse(path, lastId, onEvent, signal) {
  const extra = { Accept: "text/event-stream" };
  if (lastId) extra["Last-Event-ID"] = String(lastId);
  const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const message = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") message.event = text;
        else if (field === "data") message.data += text;
        else if (field === "id") message.id = Number(text);
      }
      if (message.data) onEvent(message.event, JSON.parse(message.data), message.id);
    }
  }
}

// --- formatting --------------------------------------------------------------------

function statusColor(status) { return "var(--s-" + status + ")"; }

function badge(status) {
  return el("span", { class: "badge", dataset: { status }, color: statusColor(status) }, status);
}

function clock(ts) {
  const d = new Date(ts * 1000);
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
    "." + pad(d.getMilliseconds(), 3);
}

function dateTime(ts) {
  return ts == null ? "—" : new Date(ts * 1000).toLocaleDateString() + " " + clock(ts);
}

function seconds(s) {
  if (s == null || !isFinite(s)) return "—";
  if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  if (s < 120) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function ago(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 1) return "just now";
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return new Date(ts * 1000).toLocaleDateString();
}

function duration(task) {
  const end = task.ended_at != null ? task.ended_at : Date.now() / 1000;
  return seconds(end - task.created_at);
}

function pretty(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

// --- the overview --------------------------------------------------------------------

async function refreshFunctions() {
  const { functions } = await api("/v1/functions");
  const cards = $("functions");
  cards.replaceChildren();
  if (!functions.length) cards.append(el("div", { class: "empty" }, "No functions registered."));
  let busy = 0;
  for (const fn of functions) {
    cards.append(functionCard(fn));
    busy += fn.running || 0;
  }
  $("fn-summary").textContent = functions.length + " registered · " + busy + " running";
  updateFunctionFilter(functions.map((fn) => fn.name));
}

function functionCard(fn) {
  const total = INSTANCE_STATES.reduce((sum, [key]) => sum + (fn.instances[key] || 0), 0);
  const bar = el("div", { class: "bar", title: total + " instance(s)" });
  const chips = el("div", { class: "chips" });
  for (const [key, label] of INSTANCE_STATES) {
    const count = fn.instances[key] || 0;
    const color = "var(--i-" + key + ")";
    if (count) {
      // sizes through the CSSOM: the CSP allows no inline style attributes
      const segment = el("i", { title: label + ": " + count });
      segment.style.width = (100 * count / total) + "%";
      segment.style.background = color;
      bar.append(segment);
    }
    chips.append(el("span", { class: "chip" + (count ? "" : " zero"), dataset: { state: key } },
      el("i", { color }), label, " ", el("b", {}, String(count))));
  }
  const stat = (value, label) =>
    el("div", { class: "stat" }, el("b", {}, value == null ? "—" : String(value)), el("span", {}, label));
  return el("article", { class: "card", dataset: { function: fn.name } },
    el("div", { class: "card-head" },
      el("span", { class: "card-name", title: fn.name }, fn.name),
      el("span", { class: "kind" }, fn.kind)),
    el("div", { class: "card-sub" },
      fn.config.max_instances + "×" + fn.config.concurrency + " slots · " +
      fn.config.max_retries + " retries · " + fn.config.timeout + " s timeout"),
    el("div", { class: "stats" },
      stat(fn.queued, "queued"), stat(fn.running, "running"), stat(total, "instances")),
    bar, chips);
}

function updateFunctionFilter(names) {
  const select = $("f-function");
  const current = select.value;
  const have = Array.from(select.options).slice(1).map((o) => o.value).join("\n");
  if (have === names.join("\n")) return;
  select.replaceChildren(el("option", { value: "" }, "All functions"),
    ...names.map((name) => el("option", { value: name }, name)));
  select.value = names.includes(current) ? current : "";
}

function taskQuery() {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  for (const key of ["function", "status", "prefix"]) {
    const value = $("f-" + key).value.trim();
    if (value) params.set(key, value);
  }
  const cursor = state.pages[state.pages.length - 1];
  if (cursor) params.set("cursor", cursor);
  return "/v1/tasks?" + params;
}

async function refreshTasks() {
  const page = await api(taskQuery());
  const rows = $("task-rows");
  rows.replaceChildren();
  if (!page.tasks.length) {
    rows.append(el("tr", {}, el("td", { colspan: "6", class: "empty" }, "No tasks match.")));
  }
  const first = state.seen.size === 0;
  for (const task of page.tasks) {
    const fresh = !first && !state.seen.has(task.task_id);
    state.seen.add(task.task_id);
    rows.append(taskRow(task, fresh));
  }
  state.next = page.next_cursor;
  $("page-older").disabled = !page.next_cursor;
  $("page-newest").disabled = state.pages.length === 1;
  $("page-info").textContent = "page " + state.pages.length;
  $("tasks-summary").textContent = page.tasks.length
    ? "showing " + page.tasks.length + (page.next_cursor ? " of many" : "") : "";
}

function taskRow(task, fresh) {
  const open = () => { location.hash = "#/tasks/" + encodeURIComponent(task.task_id); };
  return el("tr", { class: "row" + (fresh ? " fresh" : ""), dataset: { taskId: task.task_id, status: task.status }, onclick: open },
    el("td", { class: "id", title: task.task_id }, task.task_id),
    el("td", {}, task.function),
    el("td", {}, badge(task.status)),
    el("td", { class: "opt num" }, String(task.attempts)),
    el("td", { title: dateTime(task.created_at) }, ago(task.created_at)),
    el("td", { class: "opt num" }, duration(task)));
}

async function refreshOverview() {
  try {
    await Promise.all([refreshFunctions(), refreshTasks()]);
  } catch (error) {
    if (!(error instanceof ApiError)) console.warn(error);
  }
}

function resetPages() {
  state.pages = [null];
  refreshOverview();
}

// --- the task page ---------------------------------------------------------------------

function showTask(record) {
  const current = state.task;
  $("t-id").textContent = record.task_id;
  const status = $("t-status");
  status.replaceWith(Object.assign(badge(record.status), { id: "t-status" }));
  document.title = record.task_id + " · " + record.status + " · stint";
  $("stop").disabled = TERMINAL.has(record.status) || record.status === "Stopping";
  const rows = [
    ["Function", record.function],
    ["Status", record.status],
    ["Instance", record.instance_id || "—"],
    ["Attempts", record.attempts + " (" + record.retries + " retries)"],
    ["Created", dateTime(record.created_at)],
    ["Started", dateTime(record.started_at)],
    ["Ended", dateTime(record.ended_at)],
    ["Duration", record.ended_at != null ? seconds(record.ended_at - record.created_at) : "running"],
  ];
  $("t-details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("t-payload").textContent = pretty(record.payload);
  $("t-result-box").hidden = record.status !== "Succeeded";
  $("t-result").textContent = pretty(record.result);
  $("t-error-box").hidden = !record.error;
  if (record.error) {
    $("t-error").textContent = record.error.type + ": " + record.error.message;
    $("t-trace").textContent = record.error.traceback || "(no traceback)";
  }
  if (current && record.events.length > current.events.length) {
    // the record knows more than the timeline shows: add what is missing
    const shown = current.events.length;
    for (const event of record.events.slice(shown)) addEvent(event, shown > 0);
    current.lastId = Math.max(current.lastId, record.events.length);
  }
}

function addEvent(event, animate) {
  const events = state.task.events;
  const first = events.length ? events[0].timestamp : event.timestamp;
  const previous = events.length ? events[events.length - 1].timestamp : event.timestamp;
  events.push(event);
  const color = statusColor(event.status);
  $("timeline").append(el("li", { class: animate ? "new" : "", color, dataset: { status: event.status } },
    el("div", { class: "ev-head" },
      el("span", { class: "ev-state" }, event.status),
      el("span", { class: "ev-time", title: dateTime(event.timestamp) }, clock(event.timestamp)),
      events.length > 1
        ? el("span", { class: "ev-delta", title: "+" + seconds(event.timestamp - first) + " from the start" },
          "+" + seconds(event.timestamp - previous))
        : null),
    event.detail ? el("div", { class: "ev-detail" }, event.detail) : null));
}

async function openTask(id) {
  closeTask();
  const task = { id, abort: new AbortController(), events: [], lastId: 0 };
  state.task = task;
  $("timeline").replaceChildren();
  $("t-id").textContent = id;
  let record;
  try {
    record = await api("/v1/tasks/" + encodeURIComponent(id));
  } catch (error) {
    banner(error.message);
    return;
  }
  if (state.task !== task) return;
  showTask(record);
  if (!TERMINAL.has(record.status)) follow(task);
}

async function follow(task) {
  // live: transitions as they happen; reconnects (resuming after the last id) if cut
  $("t-live").hidden = false;
  const path = "/v1/tasks/" + encodeURIComponent(task.id) + "/events";
  let ended = false;
  while (!ended && state.task === task) {
    try {
      await sse(path, task.lastId, (kind, data, id) => {
        if (kind === "transition" && id > task.events.length) {
          task.lastId = id;
          addEvent(data, true);
          const badgeNode = $("t-status");
          badgeNode.replaceWith(Object.assign(badge(data.status), { id: "t-status" }));
          $("stop").disabled = TERMINAL.has(data.status) || data.status === "Stopping";
        } else if (kind === "end" || kind === "error") {
          ended = true;
        }
      }, task.abort.signal);
    } catch (error) {
      if (task.abort.signal.aborted) return;
      if (error instanceof ApiError && error.status === 404) break;
    }
    if (!ended) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  if (state.task !== task) return;
  $("t-live").hidden = true;
  try {
    showTask(await api("/v1/tasks/" + encodeURIComponent(task.id)));
  } catch (error) { /* shown by the connection state */ }
}

function closeTask() {
  if (state.task) state.task.abort.abort();
  state.task = null;
  $("t-live").hidden = true;
}

async function stopTask() {
  const task = state.task;
  if (!task) return;
  const button = $("stop");
  button.disabled = true;
  button.textContent = "Stopping…";
  try {
    const record = await api("/v1/tasks/" + encodeURIComponent(task.id) + "/stop", { method: "POST" });
    if (state.task === task) showTask(record);
  } catch (error) {
    banner(error.message);
    button.disabled = false;
  } finally {
    button.textContent = "Stop task";
  }
}

// --- routing ---------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/tasks\/(.+)$/);
  clearInterval(state.timer);
  if (match) {
    $("overview").hidden = true;
    $("task").hidden = false;
    openTask(decodeURIComponent(match[1]));
  } else {
    closeTask();
    document.title = "stint";
    $("task").hidden = true;
    $("overview").hidden = false;
    refreshOverview();
    state.timer = setInterval(() => { if (!document.hidden) refreshOverview(); }, REFRESH_MS);
  }
}

function init() {
  takeToken();
  $("filters").addEventListener("change", resetPages);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); resetPages(); });
  let typing;
  $("f-prefix").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(resetPages, 300); });
  $("page-older").addEventListener("click", () => {
    if (state.next) { state.pages.push(state.next); refreshTasks(); }
  });
  $("page-newest").addEventListener("click", resetPages);
  $("stop").addEventListener("click", stopTask);
  window.addEventListener("hashchange", route);
  route();
}

init();
