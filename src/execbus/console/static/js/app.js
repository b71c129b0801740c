// The execbus console page: one server-sent event stream, views rebuilt from its data.
import { el, setText, show } from "./dom.js";
import { argv, clock, dateTime, duration, exitText, labels } from "./format.js";
import { renderOutput } from "./output.js";
import { drawCharts, resizeCharts } from "./charts.js";

const state = {
  tab: "execs",
  exec: null, // [agent, execId] on the exec view
  source: null,
  offset: 0, // local clock - server clock (seconds)
  session: { control: false, user: null, csrf: null, namespace: "" },
  namespace: "",
  stats: null,
  detail: null,
  rows: [],
  agents: [],
  killArmed: null,
};

const $ = (id) => document.getElementById(id);
const serverNow = () => Date.now() / 1000 - state.offset;

// -- routing ---------------------------------------------------------------

function route() {
  const hash = location.hash || "#/execs";
  const parts = hash.slice(2).split("/").map(decodeURIComponent);
  const tab = ["execs", "fleet", "charts", "exec"].includes(parts[0]) ? parts[0] : "execs";
  const exec = tab === "exec" && parts[1] && parts[2] ? [parts[1], parts[2]] : null;
  const changedExec = JSON.stringify(exec) !== JSON.stringify(state.exec);
  state.tab = tab;
  state.exec = exec;
  for (const name of ["execs", "fleet", "charts", "exec"]) show(`tab-${name}`, name === tab);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.tab === tab);
  }
  if (changedExec) {
    $("x-output").replaceChildren();
    state.detail = null;
    state.killArmed = null;
    setText("x-kill-result", "");
    connect();
  }
  if (tab === "charts") {
    requestAnimationFrame(() => {
      drawCharts(state.stats);
      resizeCharts();
    });
  }
}

// -- the stream --------------------------------------------------------------

function params() {
  const p = new URLSearchParams();
  for (const input of $("filters").querySelectorAll("input[name], select[name]")) {
    if (input.value.trim()) p.set(input.name, input.value.trim());
  }
  if (state.exec) p.set("exec", `${state.exec[0]}/${state.exec[1]}`);
  const chart = $("chart-agent").value;
  if (chart) p.set("chart", chart);
  return p;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`/api/stream?${params()}`);
  state.source = source;
  source.onmessage = (message) => {
    if (source !== state.source) return;
    apply(JSON.parse(message.data));
  };
  source.onerror = () => {
    if (source !== state.source) return;
    setLink(false, "the console itself is unreachable; retrying");
  };
}

function apply(doc) {
  state.offset = Date.now() / 1000 - doc.now;
  if (doc.namespace !== undefined) {
    state.namespace = doc.namespace;
    setText("namespace", doc.namespace);
  }
  if (doc.broker) setLink(doc.broker.connected, doc.broker.error);
  if (doc.notices) {
    setText("notices", doc.notices.join(" · "));
    show("notices", doc.notices.length > 0);
  }
  if (doc.counts) renderCounts(doc.counts);
  if (doc.agents) renderAgentChoices(doc.agents);
  if (doc.fleet) renderFleet(doc.fleet);
  if (doc.execs) {
    state.rows = doc.execs.rows;
    renderRows(doc.execs);
  } else if (doc.counts) {
    renderRows(null); // refresh running durations
  }
  if (doc.stats) {
    state.stats = doc.stats;
    if (state.tab === "charts") drawCharts(doc.stats);
    const t = doc.stats.totals;
    setText("chart-totals", `last 5 min: ${t.new} new, ${t.ok} ok, ${t.nonzero} non-zero, ${t.signalled} signalled, ${t.timed_out} timed out, ${t.failed} failed`);
  }
  if ("exec" in doc) {
    state.detail = doc.exec;
    renderExec(doc.exec);
  }
  if (doc.output) {
    renderOutput($("x-output"), doc.output);
    setText("x-output-note", doc.output.trimmed ? "(older output dropped)" : "");
  }
}

function setLink(connected, error) {
  const link = $("link");
  link.textContent = connected ? "broker connected" : "broker unreachable";
  link.className = connected ? "pill ok" : "pill bad";
  const banner = $("banner");
  if (connected) {
    show(banner, false);
  } else {
    banner.textContent = `Broker unreachable: ${error || "reconnecting"}. Showing the last known state; it updates again when the broker is back.`;
    show(banner, true);
  }
}

function renderCounts(c) {
  setText("c-execs", `${c.execs} / ${c.max_execs}`);
  setText("c-running", c.states.running);
  setText("c-events", c.events);
  setText("c-malformed", c.malformed);
  setText("c-evicted", c.evicted);
  $("c-malformed").parentElement.classList.toggle("warn", c.malformed > 0);
}

function renderAgentChoices(agents) {
  if (JSON.stringify(agents) === JSON.stringify(state.agents)) return;
  state.agents = agents;
  for (const id of ["f-agent", "chart-agent"]) {
    const select = $(id);
    const current = select.value;
    const first = select.options[0].cloneNode(true);
    select.replaceChildren(first, ...agents.map((a) => el("option", { value: a, text: a })));
    if (agents.includes(current)) select.value = current;
  }
}

// -- execs -------------------------------------------------------------------

function rowDuration(row) {
  if (row.duration !== null && row.duration !== undefined) return duration(row.duration);
  if (row.state === "running" && row.started_at) return `${duration(serverNow() - row.started_at)} …`;
  return "";
}

// exec.created carries the user (left out for the agent's default); without it, unknown.
function userNote(row) {
  if (row.user) return "";
  return row.cmd ? "the agent's default user" : "unknown: exec.created was not seen";
}

function renderRows(execs) {
  const rows = state.rows;
  const tbody = $("exec-rows");
  if (execs) {
    const shown = rows.length < execs.matched ? `newest ${rows.length} of ${execs.matched}` : `${execs.matched}`;
    setText("matched", `${shown} matching`);
  }
  tbody.replaceChildren(...rows.map((row) => {
    const href = `#/exec/${encodeURIComponent(row.agent)}/${encodeURIComponent(row.id)}`;
    const tr = el("tr", { class: `state-${row.state}`, dataset: { key: row.key, state: row.state, exit: row.exit_code ?? "" } },
      el("td", { class: "id" }, el("a", { href, text: row.id })),
      el("td", { class: "agent", text: row.agent }),
      el("td", { class: "container", text: row.container || "~" }),
      el("td", { class: "cmd", text: argv(row.cmd, row.cmd_more), title: argv(row.cmd, row.cmd_more) }),
      el("td", { class: row.user ? "user" : "user muted", text: row.user ?? "–", title: userNote(row) }),
      el("td", { class: "state" }, el("span", { class: `state ${row.state}`, text: row.state }),
        row.gap ? el("span", { class: "gap", text: " ?", title: "the console was disconnected while this exec ran: events may be missing" }) : null),
      el("td", { class: `exit result-${row.result || "none"}`, text: exitText(row) }),
      el("td", { class: "duration", text: rowDuration(row) }),
      el("td", { class: "started", text: clock(row.started_at || row.created_at || row.seen_at), title: dateTime(row.started_at || row.created_at || row.seen_at) }),
      el("td", { class: "labels", text: labels(row.labels) }),
    );
    tr.addEventListener("click", (event) => {
      if (event.target.tagName !== "A") location.hash = href;
    });
    return tr;
  }));
}

// -- fleet -------------------------------------------------------------------

function renderFleet(fleet) {
  $("worker-rows").replaceChildren(...fleet.workers.map((w) => el("tr", { class: `worker ${w.status}`, dataset: { worker: w.id, status: w.status } },
    el("td", { class: "id", text: w.id }),
    el("td", {}, el("span", { class: `status ${w.status}`, text: w.status })),
    el("td", { text: w.version }),
    el("td", { text: duration(w.uptime) }),
    el("td", { text: w.load }),
    el("td", { text: `${w.heard.toFixed(1)} s ago` }),
    el("td", { class: "owned", text: w.owned.join(" ") }),
    el("td", { text: w.pools.join(" ") }),
  )));
  $("agent-rows").replaceChildren(...fleet.agents.map((a) => {
    let link = "–";
    let cls = "";
    if (a.connected === true) { link = "connected"; cls = "ok"; }
    else if (a.connected === false) { link = `DOWN (${a.code || "?"}): ${a.reason}`; cls = "bad"; }
    return el("tr", { class: a.moved_from ? "moved" : "", dataset: { agent: a.name, owner: a.owner || "" } },
      el("td", { class: "id", text: a.name }),
      el("td", { class: "owner" }, a.owner || el("span", { class: "bad", text: "no owner" }),
        a.moved_from ? el("span", { class: "muted", text: ` (moved from ${a.moved_from})` }) : null),
      el("td", { class: `link ${cls}`, text: link, title: a.link_since ? `since ${dateTime(a.link_since)}` : "" }),
      el("td", { text: a.workers.join(" ") }),
    );
  }));
  $("pool-rows").replaceChildren(...fleet.pools.map((p) => el("tr", {},
    el("td", { text: p.name }), el("td", { text: p.workers.join(" ") }))));
}

// -- one exec ------------------------------------------------------------------

function renderExec(x) {
  show("exec-missing", !x);
  show("exec-body", !!x);
  if (!x) return;
  setText("x-id", x.id);
  const badge = $("x-state");
  badge.textContent = x.state + (x.result ? ` · ${exitText(x)}` : "");
  badge.className = `state ${x.state}`;
  let line = `execbus inspect ${x.id} --agent ${x.agent}`;
  if (state.namespace && state.namespace !== "execbus") line += ` --namespace ${state.namespace}`;
  setText("x-inspect", line);
  const record = [
    ["agent", x.agent], ["container", x.container || "~ (the agent's host)"],
    ["cmd", x.cmd ? argv(x.cmd, x.cmd_more) : "(unknown: exec.created was not seen)"],
    ["env keys", x.env_keys.length ? x.env_keys.join(" ") : "–"], ["user", x.user ?? `– (${userNote(x)})`],
    ["tty", x.tty === null ? "unknown" : String(x.tty)], ["pid", x.pid ?? "–"],
    ["state", x.state], ["exit", exitText(x) || "–"], ["error", x.error_message || "–"],
    ["duration", rowDuration(x) || "–"], ["created", dateTime(x.created_at) || "–"],
    ["started", dateTime(x.started_at) || "–"], ["finished", dateTime(x.finished_at) || "–"],
    ["labels", labels(x.labels) || "–"],
    ["output", `${x.output_chunks} chunks streamed, ${x.output_bytes} bytes${x.dropped ? `; ${x.dropped} bytes over the capture limit` : ""}`],
  ];
  $("x-record").replaceChildren(...record.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { class: `f-${k.replace(/ /g, "-")}`, text: v })]));
  $("x-timeline").replaceChildren(...x.timeline.map((step) => el("li", { class: `step ${step.kind}` },
    el("span", { class: "when", text: clock(step.time), title: dateTime(step.time) }), " ",
    el("b", { text: step.kind }), step.note ? ` ${step.note}` : "")));
  const canKill = state.session.control && state.session.user && !["exited", "failed"].includes(x.state);
  show("x-kill", canKill);
  if (!canKill) {
    state.killArmed = null;
    $("x-kill").textContent = "Kill (SIGKILL)";
  }
}

async function kill() {
  const x = state.detail;
  if (!x) return;
  const button = $("x-kill");
  if (state.killArmed !== x.key) {
    state.killArmed = x.key;
    button.textContent = "Really kill?";
    setTimeout(() => {
      if (state.killArmed === x.key) {
        state.killArmed = null;
        button.textContent = "Kill (SIGKILL)";
      }
    }, 4000);
    return;
  }
  state.killArmed = null;
  button.textContent = "Kill (SIGKILL)";
  const response = await post(`/api/execs/${encodeURIComponent(x.agent)}/${encodeURIComponent(x.id)}/signal`, { signal: "SIGKILL" });
  const body = await response.json().catch(() => ({}));
  setText("x-kill-result", response.ok ? `SIGKILL sent as ${body.user}` : `refused: ${body.code || response.status}: ${body.error || ""}`);
}

// -- session -------------------------------------------------------------------

function post(url, body) {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": state.session.csrf || "" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
}

async function loadSession() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  state.session = await response.json();
  renderSession();
}

function renderSession() {
  const s = state.session;
  show("auth", s.control);
  show("login-form", s.control && !s.user);
  show("whoami", s.control && !!s.user);
  setText("whoami-user", s.user ? `logged in as ${s.user}` : "");
  if (state.detail) renderExec(state.detail);
}

async function login(event) {
  event.preventDefault();
  const response = await post("/api/login", { user: $("login-user").value, password: $("login-password").value });
  const body = await response.json().catch(() => ({}));
  $("login-password").value = "";
  setText("login-error", response.ok ? "" : body.error || `login failed (${response.status})`);
  if (response.ok) await loadSession();
}

async function logout() {
  await post("/api/logout", {});
  await loadSession();
}

async function copyInspect() {
  const text = $("x-inspect").textContent;
  try {
    await navigator.clipboard.writeText(text);
    setText("x-kill-result", "copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("x-inspect"));
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setText("x-kill-result", "selected: press Ctrl+C");
  }
}

// -- start -----------------------------------------------------------------------

let filterTimer = null;
function filtersChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(connect, 200);
}

function start() {
  $("filters").addEventListener("input", filtersChanged);
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("f-clear").addEventListener("click", () => {
    $("filters").reset();
    connect();
  });
  $("chart-agent").addEventListener("change", connect);
  $("x-kill").addEventListener("click", kill);
  $("x-copy").addEventListener("click", copyInspect);
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", resizeCharts);
  setInterval(() => renderRows(null), 1000);
  loadSession().catch(() => {});
  route();
  if (!state.source) connect();
}

start();
