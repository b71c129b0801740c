// execbus wire-contract conformance suite: a Node.js client written from docs/integration.md
// and docs/schema alone (amqplib, ajv, @asyncapi/parser), run against a real worker and agent.
//
//   EXECBUS_AMQP_URL=amqp://... EXECBUS_NAMESPACE=ns CONTRACT_AGENT=a1 \
//   CONTRACT_MARKER_DIR=/tmp/x node contract.js
//
// It prints one JSON report on stdout and exits 0 when every check passed. Every reply and
// every event it receives is validated against docs/schema with ajv in strict mode; so is
// every request it sends (the invalid ones must fail). Side effects are counted by the
// caller: each command that must run exactly once appends a line to a marker file
// (report.markers: name -> path).
"use strict";

const crypto = require("node:crypto");
const path = require("node:path");
const amqp = require("amqplib");
const { loadSchemas, parseAsyncApi } = require("./schemas");

const URL = process.env.EXECBUS_AMQP_URL || "amqp://guest:guest@localhost:5672/";
const NS = process.env.EXECBUS_NAMESPACE || "execbus";
const AGENT = process.env.CONTRACT_AGENT || "local";
const MARKERS = process.env.CONTRACT_MARKER_DIR || "/tmp";
const DOCS = process.env.CONTRACT_DOCS_DIR || path.join(__dirname, "..", "..", "docs");
const ROUNDS = Number(process.env.CONTRACT_ORDER_ROUNDS || 3);
const CONCURRENCY = Number(process.env.CONTRACT_ORDER_EXECS || 50);
const TIMEOUT_MS = 20000;

const report = {
  ok: false,
  agent: AGENT,
  namespace: NS,
  checks: [],
  violations: [],
  validated: { replies: 0, events: 0, requests: 0, rejected_requests: 0 },
  schemas: {},
  asyncapi: {},
  markers: {},
};

const newId = () => crypto.randomUUID().replace(/-/g, "");
const b64 = (bytes) => Buffer.from(bytes).toString("base64");
const unb64 = (text) => Buffer.from(text || "", "base64");
const STD_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

class Failure extends Error {}

function expect(cond, message, detail) {
  if (!cond) {
    const text = detail === undefined ? message : `${message}: ${JSON.stringify(detail)}`;
    throw new Failure(text.slice(0, 2000));
  }
}

function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Bytes fields out must be padded standard base64 that decodes to what the process wrote.
function decodeStd(text, where) {
  expect(typeof text === "string" && STD_B64.test(text), `${where} is not standard base64`, text);
  const bytes = unb64(text);
  expect(bytes.toString("base64") === text, `${where} does not round-trip`, text);
  return bytes;
}

class Peer {
  constructor(validators) {
    this.v = validators;
    this.replies = new Map(); // correlation id -> {resolve, promise}
    this.lateReplies = new Map(); // correlation id -> [reply, ...] (a second reply)
    this.events = new Map(); // exec id -> [event, ...] in arrival order
    this.eventIds = new Set();
    this.duplicates = [];
    this.waiters = [];
  }

  async open() {
    this.conn = await amqp.connect(URL);
    this.ch = await this.conn.createConfirmChannel();
    // The workers declare both exchanges; look them up passively (integration.md section 1).
    await this.ch.checkExchange(`${NS}.requests`);
    await this.ch.checkExchange(`${NS}.events`);
    const replies = await this.ch.assertQueue("", { exclusive: true, autoDelete: true });
    this.replyQueue = replies.queue;
    await this.ch.consume(this.replyQueue, (msg) => this.onReply(msg), { noAck: true });
    // ONE queue for every event of the agent: the ordering check reads from it.
    const events = await this.ch.assertQueue("", { exclusive: true, autoDelete: true });
    await this.ch.bindQueue(events.queue, `${NS}.events`, `exec.${AGENT}.#`);
    await this.ch.consume(events.queue, (msg) => this.onEvent(msg), { noAck: true });
  }

  async close() {
    if (this.conn) await this.conn.close();
  }

  violation(kind, detail) {
    report.violations.push({ kind, ...detail });
  }

  validate(file, doc, kind) {
    const validate = this.v[file];
    if (!validate) {
      this.violation(kind, { schema: file, errors: ["no such schema"], doc });
      return false;
    }
    if (!validate(doc)) {
      this.violation(kind, { schema: file, errors: validate.errors.slice(0, 5), doc });
      return false;
    }
    return true;
  }

  onReply(msg) {
    let doc;
    try {
      doc = JSON.parse(msg.content.toString("utf8"));
    } catch (err) {
      this.violation("reply", { error: `reply is not JSON: ${err}` });
      return;
    }
    report.validated.replies += 1;
    this.validate("reply.json", doc, "reply");
    const props = msg.properties;
    if (props.type !== "reply" || props.contentType !== "application/json") {
      this.violation("reply", { error: "reply properties", type: props.type, contentType: props.contentType });
    }
    const slot = this.replies.get(props.correlationId);
    if (slot && !slot.done) {
      slot.done = true;
      slot.resolve(doc);
    } else {
      const list = this.lateReplies.get(props.correlationId) || [];
      list.push(doc);
      this.lateReplies.set(props.correlationId, list);
    }
  }

  onEvent(msg) {
    let event;
    try {
      event = JSON.parse(msg.content.toString("utf8"));
    } catch (err) {
      this.violation("event", { error: `event is not JSON: ${err}` });
      return;
    }
    report.validated.events += 1;
    this.validate("event.json", event, "event");
    this.validate(`${event.type}.json`, event, "event");
    const props = msg.properties;
    const headers = props.headers || {};
    const header = headers["x-execbus-exec-id"];
    const kind = String(event.type || "").replace(/^exec\./, "");
    const key = `exec.${AGENT}.${event.container_id ? "" : "~"}.${kind}`;
    const problems = [];
    if (props.messageId !== event.event_id) problems.push("message_id is not the event_id");
    if (props.type !== event.type) problems.push("the type property is not the event type");
    if (String(header) !== event.exec_id) problems.push("x-execbus-exec-id is not the exec id");
    if (!event.container_id && msg.fields.routingKey !== key) problems.push(`routing key ${msg.fields.routingKey}`);
    if (props.contentType !== "application/json") problems.push("content type");
    if (problems.length) this.violation("event", { problems, event });
    if (this.eventIds.has(event.event_id)) {
      // At least once: dropped, but reported (with what the first copy was).
      const first = this.eventsOf(event.exec_id).find((e) => e.event_id === event.event_id);
      this.duplicates.push({ first, event, same_content: JSON.stringify(first) === JSON.stringify(event) });
      return;
    }
    this.eventIds.add(event.event_id);
    const list = this.events.get(event.exec_id) || [];
    list.push(event);
    this.events.set(event.exec_id, list);
    this.waiters = this.waiters.filter((w) => !w.check());
  }

  eventsOf(execId) {
    return this.events.get(execId) || [];
  }

  waitEvent(execId, kind, ms = TIMEOUT_MS) {
    const find = () => this.eventsOf(execId).find((e) => e.type === `exec.${kind}`);
    const found = find();
    if (found) return Promise.resolve(found);
    return within(
      new Promise((resolve) => {
        this.waiters.push({
          check: () => {
            const event = find();
            if (event) resolve(event);
            return Boolean(event);
          },
        });
      }),
      ms,
      `event exec.${kind} of ${execId}`,
    );
  }

  // Publish one request (with confirms). Returns the correlation id.
  async publish(body, { messageId, raw, correlationId, valid = true } = {}) {
    const corr = correlationId || newId();
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    this.replies.set(corr, { resolve, promise, done: false });
    if (raw === undefined) {
      // Check what we send against the published request schemas too.
      const passes = this.v["request.json"](body) && (!this.v[`${body.type}.json`] || this.v[`${body.type}.json`](body));
      if (valid) {
        report.validated.requests += 1;
        this.validate("request.json", body, "request");
        if (this.v[`${body.type}.json`]) this.validate(`${body.type}.json`, body, "request");
      } else {
        report.validated.rejected_requests += 1;
        if (passes) this.violation("request", { error: "the schemas accept an invalid request", body });
      }
    }
    const content = raw !== undefined ? Buffer.from(raw) : Buffer.from(JSON.stringify(body));
    this.ch.publish(`${NS}.requests`, `agent.${AGENT}`, content, {
      contentType: "application/json",
      correlationId: corr,
      messageId: messageId || newId(),
      replyTo: this.replyQueue,
      persistent: true,
    });
    await this.ch.waitForConfirms();
    return corr;
  }

  reply(corr, ms = TIMEOUT_MS) {
    return within(this.replies.get(corr).promise, ms, `reply ${corr}`);
  }

  async call(body, opts = {}) {
    const corr = await this.publish({ v: 1, ...body }, opts);
    return this.reply(corr, opts.timeout || TIMEOUT_MS);
  }
}

function marker(name) {
  const file = path.join(MARKERS, `${name}.runs`);
  report.markers[name] = file;
  return file;
}

// A command that appends a line to its marker file each time it really runs.
function counted(name, script) {
  return ["sh", "-c", `echo ran >> '${marker(name)}'; ${script}`];
}

// A retried exec published its events once: created, started, exited, nothing more.
function expectOneLifecycle(peer, execId) {
  const kinds = peer.eventsOf(execId).map((e) => e.type);
  expect(JSON.stringify(kinds) === '["exec.created","exec.started","exec.exited"]', "events published once", kinds);
}

function ok(reply, what) {
  expect(reply && reply.ok === true, `${what}: not ok`, reply);
  return reply.result;
}

function fails(reply, code, what) {
  expect(reply && reply.ok === false && reply.error && reply.error.code === code, `${what}: expected ${code}`, reply);
  return reply.error;
}

// ---------------------------------------------------------------------------------------
// The checks. Each returns details for the report, or throws.

const checks = {};

checks.run = async (peer) => {
  const execId = newId();
  const config = {
    cmd: ["sh", "-c", "echo out:$GREETING; echo err >&2; exit 3"],
    env: ["GREETING=hello"],
    labels: { suite: "contract" },
    timeout: 60,
    user: String(process.getuid()), // the agent runs as this test's user: it may name itself
  };
  const reply = await peer.call({ type: "exec.run", exec_id: execId, config });
  const result = ok(reply, "exec.run");
  expect(reply.replayed === false, "a first run is not a replay", reply);
  expect(reply.exec_id === execId && result.exec_id === execId, "exec id echoed", reply);
  expect(result.state === "exited" && result.exit.exit_code === 3, "exit code 3", result);
  expect(decodeStd(result.exit.stdout, "stdout").toString() === "out:hello\n", "stdout", result.exit);
  expect(decodeStd(result.exit.stderr, "stderr").toString() === "err\n", "stderr", result.exit);
  expect(JSON.stringify(result.env_keys) === '["GREETING"]', "env keys only", result);
  const exited = await peer.waitEvent(execId, "exited");
  const kinds = peer.eventsOf(execId).map((e) => e.type);
  expect(JSON.stringify(kinds) === '["exec.created","exec.started","exec.exited"]', "events", kinds);
  for (const event of peer.eventsOf(execId)) {
    expect(event.labels.suite === "contract", "labels on every event", event);
  }
  expect(exited.exit.exit_code === 3 && exited.exit.stdout === result.exit.stdout, "event exit", exited);
  const created = peer.eventsOf(execId)[0];
  expect(JSON.stringify(created.env_keys) === '["GREETING"]' && !JSON.stringify(created).includes("hello"), "no env values in events", created);
  expect(created.user === config.user, "exec.created carries the user", created);
  return { request_type: reply.request_type, events: kinds };
};

checks.base64_alphabets = async (peer) => {
  // Bytes whose base64 differs between the standard and the URL-safe alphabet.
  const cases = [
    { script: "printf '\\373\\377\\277'", bytes: [0xfb, 0xff, 0xbf], text: "+/+/" },
    { script: "printf 'ab?'", bytes: [0x61, 0x62, 0x3f], text: "YWI/" },
  ];
  const seen = [];
  for (const c of cases) {
    const execId = newId();
    const config = { cmd: ["sh", "-c", `${c.script}; ${c.script} >&2`], stream_output: true };
    const result = ok(await peer.call({ type: "exec.run", exec_id: execId, config }), c.script);
    expect(result.exit.stdout === c.text, `stdout of ${c.script}`, result.exit);
    expect(result.exit.stderr === c.text, `stderr of ${c.script}`, result.exit);
    expect(decodeStd(result.exit.stdout, "stdout").equals(Buffer.from(c.bytes)), "decoded stdout", result.exit);
    await peer.waitEvent(execId, "exited");
    const outputs = peer.eventsOf(execId).filter((e) => e.type === "exec.output" && e.stream === "stdout");
    const streamed = Buffer.concat(outputs.map((e) => decodeStd(e.data, "exec.output data")));
    expect(streamed.equals(Buffer.from(c.bytes)), "streamed bytes", outputs);
    seen.push({ script: c.script, stdout: result.exit.stdout });
  }
  // Input: both alphabets, padded or not. "-_-_" is the URL-safe spelling of fb ff bf.
  const execId = newId();
  const config = { cmd: ["cat"], attach_stdin: true };
  ok(await peer.call({ type: "exec.create", exec_id: execId, config }), "create cat");
  ok(await peer.call({ type: "exec.start", exec_id: execId, detach: true }), "start cat");
  ok(await peer.call({ type: "exec.stdin", exec_id: execId, data: "-_-_" }), "stdin url-safe");
  ok(await peer.call({ type: "exec.stdin", exec_id: execId, data: "YWI/" }), "stdin standard");
  ok(await peer.call({ type: "exec.stdin", exec_id: execId, data: "YQ", close: true }), "stdin unpadded");
  const done = ok(await peer.call({ type: "exec.wait", exec_id: execId, include_output: true }), "wait cat");
  const expected = Buffer.from([0xfb, 0xff, 0xbf, 0x61, 0x62, 0x3f, 0x61]);
  expect(decodeStd(done.exit.stdout, "stdout").equals(expected), "stdin bytes came back", done.exit);
  expect(done.exit.stdout === "+/+/YWI/YQ==", "standard base64 out", done.exit);
  return { outputs: seen, stdin_echo: done.exit.stdout };
};

checks.retry_finished = async (peer) => {
  const body = {
    type: "exec.run",
    exec_id: newId(),
    config: { cmd: counted("retry_finished", "printf '\\373\\377\\277'; echo oops >&2; exit 4") },
  };
  const first = await peer.call(body, { messageId: newId() });
  const retry = await peer.call(body, { messageId: newId() }); // a new message, the same exec
  ok(first, "first run");
  ok(retry, "retry");
  expect(first.replayed === false && retry.replayed === true, "replayed flags", [first.replayed, retry.replayed]);
  expect(JSON.stringify(retry.result.exit) === JSON.stringify(first.result.exit), "the recorded outcome", [first.result.exit, retry.result.exit]);
  expect(retry.result.exit.exit_code === 4 && retry.result.exit.stdout === "+/+/", "exit", retry.result.exit);
  await peer.waitEvent(body.exec_id, "exited");
  expectOneLifecycle(peer, body.exec_id);
  return { exit: retry.result.exit };
};

checks.retry_running = async (peer) => {
  const body = {
    type: "exec.run",
    exec_id: newId(),
    config: { cmd: counted("retry_running", "sleep 1; echo done") },
  };
  const firstCorr = await peer.publish({ v: 1, ...body }, { messageId: newId() });
  await peer.waitEvent(body.exec_id, "started");
  const retryCorr = await peer.publish({ v: 1, ...body }, { messageId: newId() });
  const [first, retry] = await Promise.all([peer.reply(firstCorr), peer.reply(retryCorr)]);
  ok(first, "first run");
  ok(retry, "retry while running");
  expect(first.replayed === false && retry.replayed === true, "replayed flags", [first.replayed, retry.replayed]);
  expect(unb64(retry.result.exit.stdout).toString() === "done\n", "the retry got the result", retry);
  expect(JSON.stringify(retry.result.exit) === JSON.stringify(first.result.exit), "same outcome", [first, retry]);
  await peer.waitEvent(body.exec_id, "exited");
  expectOneLifecycle(peer, body.exec_id);
  return { replayed: [first.replayed, retry.replayed] };
};

checks.conflict = async (peer) => {
  const execId = newId();
  const config = { cmd: counted("conflict", "true") };
  ok(await peer.call({ type: "exec.run", exec_id: execId, config }), "run");
  const other = { ...config, env: ["X=1"] };
  const clash = await peer.call({ type: "exec.run", exec_id: execId, config: other }, { messageId: newId() });
  const created = await peer.call({ type: "exec.create", exec_id: execId, config: other });
  fails(clash, "conflict", "run with another config");
  fails(created, "conflict", "create with another config");
  return { message: clash.error.message };
};

checks.create_start_inspect_list_remove = async (peer) => {
  const execId = newId();
  const config = { cmd: counted("create_start", "echo started; exit 7"), labels: { step: "cs" } };
  const created = await peer.call({ type: "exec.create", exec_id: execId, config });
  expect(ok(created, "create").state === "created" && created.replayed === false, "created", created);
  const again = await peer.call({ type: "exec.create", exec_id: execId, config }, { messageId: newId() });
  expect(ok(again, "create again").state === "created" && again.replayed === true, "create is idempotent", again);
  const inspected = ok(await peer.call({ type: "exec.inspect", exec_id: execId }), "inspect");
  expect(inspected.state === "created" && inspected.labels.step === "cs", "inspect created", inspected);
  const listed = ok(await peer.call({ type: "exec.list", container_id: "", include_finished: true }), "list");
  expect(Array.isArray(listed.execs) && listed.execs.some((e) => e.exec_id === execId), "list has it", listed);
  const started = await peer.call({ type: "exec.start", exec_id: execId });
  const result = ok(started, "start");
  expect(result.state === "exited" && result.exit.exit_code === 7 && started.replayed === false, "start ran it", started);
  expect(unb64(result.exit.stdout).toString() === "started\n", "stdout", result.exit);
  const restart = await peer.call({ type: "exec.start", exec_id: execId }, { messageId: newId() });
  expect(ok(restart, "start again").exit.exit_code === 7 && restart.replayed === true, "start replays", restart);
  const rerun = await peer.call({ type: "exec.run", exec_id: execId, config });
  expect(ok(rerun, "run of a created+started exec").exit.exit_code === 7 && rerun.replayed === true, "run replays", rerun);
  const waited = ok(await peer.call({ type: "exec.wait", exec_id: execId }), "wait finished");
  expect(waited.exit.exit_code === 7, "wait answers at once when finished", waited);
  // Captured output only when asked: an inspect or a list never amplifies a small request.
  expect(!("stdout" in waited.exit) && !("stderr" in waited.exit), "wait leaves the capture out", waited.exit);
  const bare = ok(await peer.call({ type: "exec.inspect", exec_id: execId }), "inspect finished");
  expect(!("stdout" in bare.exit), "inspect leaves the capture out", bare.exit);
  const full = ok(await peer.call({ type: "exec.inspect", exec_id: execId, include_output: true }), "inspect with output");
  expect(unb64(full.exit.stdout).toString() === "started\n", "inspect with include_output", full.exit);
  const all = ok(await peer.call({ type: "exec.list" }), "list finished");
  expect(all.execs.every((e) => !e.exit || !("stdout" in e.exit)), "list never carries captures", all);
  const unfinished = ok(await peer.call({ type: "exec.list", include_finished: false }), "list running");
  expect(!unfinished.execs.some((e) => e.exec_id === execId), "finished execs left out", unfinished);
  ok(await peer.call({ type: "exec.remove", exec_id: execId }), "remove");
  fails(await peer.call({ type: "exec.inspect", exec_id: execId }), "not_found", "inspect removed");
  fails(await peer.call({ type: "exec.wait", exec_id: newId() }), "not_found", "wait unknown");
  const after = ok(await peer.call({ type: "exec.list" }), "list after remove");
  expect(!after.execs.some((e) => e.exec_id === execId), "removed from list", after);
  await peer.waitEvent(execId, "exited");
  expectOneLifecycle(peer, execId);
  return { start_request_type: started.request_type };
};

checks.detach_and_signals = async (peer) => {
  const out = {};
  for (const [signal, code, name] of [["TERM", 143, "SIGTERM"], [9, 137, "SIGKILL"], ["SIGINT", 130, "SIGINT"]]) {
    const execId = newId();
    const reply = await peer.call({ type: "exec.run", exec_id: execId, config: { cmd: ["sleep", "30"], detach: true } });
    const running = ok(reply, "detached run");
    expect(running.state === "running" && typeof running.pid === "number", "detached reply at start", reply);
    await peer.waitEvent(execId, "started");
    const waitCorr = await peer.publish({ v: 1, type: "exec.wait", exec_id: execId });
    const sig = await peer.call({ type: "exec.signal", exec_id: execId, signal });
    ok(sig, `signal ${signal}`);
    const waited = ok(await peer.reply(waitCorr), "wait");
    expect(waited.exit.exit_code === code && waited.exit.signal === name, `killed by ${name}`, waited.exit);
    const event = await peer.waitEvent(execId, "exited");
    expect(event.exit.exit_code === code, "exit event", event);
    out[name] = { exec_id: execId, exit_code: waited.exit.exit_code };
  }
  // remove: a running exec needs force.
  const execId = newId();
  ok(await peer.call({ type: "exec.run", exec_id: execId, config: { cmd: ["sleep", "30"], detach: true } }), "detached");
  const refused = await peer.call({ type: "exec.remove", exec_id: execId });
  fails(refused, "conflict", "remove of a running exec without force");
  ok(await peer.call({ type: "exec.remove", exec_id: execId, force: true }), "remove force");
  const killed = await peer.waitEvent(execId, "exited");
  out.force_remove = { exec_id: execId, refused: refused.error.code, exit_code: killed.exit.exit_code };
  return out;
};

checks.stdin = async (peer) => {
  const execId = newId();
  const config = { cmd: ["sh", "-c", "while read line; do echo got:$line; done; echo eof"], attach_stdin: true };
  ok(await peer.call({ type: "exec.create", exec_id: execId, config }), "create");
  const started = await peer.call({ type: "exec.start", exec_id: execId, detach: true });
  expect(ok(started, "start").state === "running", "detached start", started);
  for (const chunk of ["one\n", "two\n", "thr", "ee\n"]) {
    ok(await peer.call({ type: "exec.stdin", exec_id: execId, data: b64(Buffer.from(chunk)) }), "stdin");
  }
  ok(await peer.call({ type: "exec.stdin", exec_id: execId, close: true }), "close stdin");
  const done = ok(await peer.call({ type: "exec.wait", exec_id: execId, include_output: true }), "wait");
  const text = decodeStd(done.exit.stdout, "stdout").toString();
  expect(text === "got:one\ngot:two\ngot:three\neof\n", "stdin in order", text);
  const noStdin = newId();
  ok(await peer.call({ type: "exec.run", exec_id: noStdin, config: { cmd: ["sleep", "30"], detach: true } }), "run");
  const refused = await peer.call({ type: "exec.stdin", exec_id: noStdin, data: b64("x") });
  fails(refused, "conflict", "stdin without attach_stdin");
  ok(await peer.call({ type: "exec.signal", exec_id: noStdin }), "kill");
  await peer.waitEvent(noStdin, "exited");
  return { stdout: text };
};

checks.tty_resize = async (peer) => {
  const execId = newId();
  const config = {
    cmd: ["sh", "-c", "read line; stty size"],
    tty: true,
    attach_stdin: true,
    console_size: { width: 80, height: 24 },
  };
  ok(await peer.call({ type: "exec.create", exec_id: execId, config }), "create tty");
  ok(await peer.call({ type: "exec.start", exec_id: execId, detach: true }), "start tty");
  ok(await peer.call({ type: "exec.resize", exec_id: execId, width: 100, height: 40 }), "resize");
  ok(await peer.call({ type: "exec.stdin", exec_id: execId, data: b64("go\n") }), "stdin");
  const done = ok(await peer.call({ type: "exec.wait", exec_id: execId, include_output: true }), "wait tty");
  const text = decodeStd(done.exit.stdout, "stdout").toString();
  expect(/40 100\r?\n$/.test(text), "the new size reached the process", text);
  // Resize of a non-TTY exec is refused.
  const plain = newId();
  ok(await peer.call({ type: "exec.run", exec_id: plain, config: { cmd: ["sleep", "30"], detach: true } }), "run");
  const refused = await peer.call({ type: "exec.resize", exec_id: plain, width: 10, height: 10 });
  fails(refused, "conflict", "resize of a non-TTY exec");
  ok(await peer.call({ type: "exec.signal", exec_id: plain, signal: "KILL" }), "kill");
  await peer.waitEvent(plain, "exited");
  return { stdout: text, non_tty_resize: refused.error.code };
};

checks.timeout = async (peer) => {
  const execId = newId();
  const reply = await peer.call({ type: "exec.run", exec_id: execId, config: { cmd: ["sleep", "30"], timeout: 0.3 } });
  const result = ok(reply, "run with timeout");
  expect(result.exit.timed_out === true && result.exit.exit_code >= 128, "timed out", result.exit);
  const event = await peer.waitEvent(execId, "exited");
  expect(event.exit.timed_out === true, "exit event says timed_out", event);
  // A TTY exec times out too.
  const tty = newId();
  const ttyReply = await peer.call({ type: "exec.run", exec_id: tty, config: { cmd: ["sleep", "30"], tty: true, timeout: 0.3 } });
  expect(ok(ttyReply, "tty timeout").exit.timed_out === true, "tty timed out", ttyReply);
  await peer.waitEvent(tty, "exited");
  return { exit: result.exit };
};

checks.output_limit = async (peer) => {
  const execId = newId();
  const cmd = ["sh", "-c", "head -c 10000 /dev/zero; head -c 50 /dev/zero >&2"];
  const result = ok(await peer.call({ type: "exec.run", exec_id: execId, config: { cmd, output_limit: 100 } }), "run");
  const stdout = decodeStd(result.exit.stdout, "stdout");
  const stderr = decodeStd(result.exit.stderr, "stderr");
  expect(stdout.length === 100 && result.exit.stdout_dropped === 9900, "stdout capped", result.exit);
  expect(stderr.length === 50 && result.exit.stderr_dropped === 0, "stderr under the cap", result.exit);
  await peer.waitEvent(execId, "exited");
  return { stdout_dropped: result.exit.stdout_dropped };
};

checks.start_failures = async (peer) => {
  const execId = newId();
  const reply = await peer.call({ type: "exec.run", exec_id: execId, config: { cmd: ["/no/such/binary"] } });
  const error = fails(reply, "command_not_found", "missing binary");
  expect(error.exit_code === 127, "exit code 127", error);
  const failed = await peer.waitEvent(execId, "failed");
  expect(failed.error.code === "command_not_found", "failed event", failed);
  const kinds = peer.eventsOf(execId).map((e) => e.type);
  expect(kinds[kinds.length - 1] === "exec.failed" && !kinds.includes("exec.started"), "no start", kinds);
  const wd = newId();
  const bad = await peer.call({ type: "exec.run", exec_id: wd, config: { cmd: ["true"], working_dir: "/no/such/dir" } });
  const wdError = fails(bad, "invalid_working_dir", "bad working dir");
  await peer.waitEvent(wd, "failed");
  return { command_not_found: error, invalid_working_dir: wdError };
};

// Per exec, from ONE queue bound to exec.<agent>.#: created < started < output (seq 0, 1, ...
// per stream) < exited, for every one of N concurrent streaming execs, several rounds.
checks.event_order = async (peer) => {
  const script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.01; done";
  const rounds = [];
  for (let round = 0; round < ROUNDS; round += 1) {
    const ids = Array.from({ length: CONCURRENCY }, () => newId());
    const corrs = await Promise.all(
      ids.map((id) => peer.publish({ v: 1, type: "exec.run", exec_id: id, config: { cmd: ["sh", "-c", script], stream_output: true } })),
    );
    const replies = await Promise.all(corrs.map((c) => peer.reply(c, 60000)));
    await Promise.all(ids.map((id) => peer.waitEvent(id, "exited", 60000)));
    const bad = [];
    let outputs = 0;
    ids.forEach((id, i) => {
      const result = replies[i].result;
      const events = peer.eventsOf(id);
      const kinds = events.map((e) => e.type);
      const problems = [];
      if (kinds[0] !== "exec.created") problems.push("created is not first");
      if (kinds[1] !== "exec.started") problems.push("started is not second");
      if (kinds[kinds.length - 1] !== "exec.exited") problems.push("exited is not last");
      if (kinds.filter((k) => k === "exec.exited").length !== 1) problems.push("not one exit");
      if (kinds.slice(2, -1).some((k) => k !== "exec.output")) problems.push("non-output in the middle");
      const streams = { stdout: [], stderr: [] };
      for (const e of events.filter((ev) => ev.type === "exec.output")) streams[e.stream].push(e);
      for (const [name, list] of Object.entries(streams)) {
        if (list.some((e, n) => e.seq !== n)) problems.push(`${name} seq ${list.map((e) => e.seq)}`);
        const joined = Buffer.concat(list.map((e) => unb64(e.data)));
        if (result && !joined.equals(unb64(result.exit[name]))) problems.push(`${name} stream != capture`);
      }
      outputs += streams.stdout.length + streams.stderr.length;
      if (!replies[i].ok) problems.push(`reply ${JSON.stringify(replies[i].error)}`);
      if (problems.length) bad.push({ exec_id: id, problems, kinds: kinds.map((k) => k.slice(5)) });
    });
    rounds.push({ execs: ids.length, output_events: outputs, out_of_order: bad.length });
    expect(bad.length === 0, `round ${round}: ${bad.length} of ${ids.length} execs out of order`, bad.slice(0, 3));
  }
  return { rounds };
};

checks.invalid_requests = async (peer) => {
  const sent = [];
  const cases = [
    { name: "not JSON", raw: "{not json" },
    { name: "env without =", body: { v: 1, type: "exec.run", exec_id: newId(), config: { cmd: ["true"], env: ["NOEQUALS"] } } },
    { name: "env with an empty name", body: { v: 1, type: "exec.run", exec_id: newId(), config: { cmd: ["true"], env: ["=x"] } } },
    { name: "unknown type", body: { v: 1, type: "exec.frobnicate", exec_id: newId() } },
  ];
  for (const c of cases) {
    const messageId = newId();
    const corr = await peer.publish(c.body, { messageId, raw: c.raw, valid: false });
    const reply = await peer.reply(corr);
    fails(reply, "invalid", c.name);
    sent.push({ name: c.name, messageId, message: reply.error.message });
  }
  // Each one is copied to <ns>.dead with the reason in x-execbus-reason.
  const ch = await peer.conn.createChannel();
  await ch.checkQueue(`${NS}.dead`);
  const wanted = new Map(sent.map((s) => [s.messageId, s]));
  const found = {};
  const deadline = Date.now() + TIMEOUT_MS;
  while (Object.keys(found).length < wanted.size && Date.now() < deadline) {
    const msg = await ch.get(`${NS}.dead`, { noAck: true });
    if (!msg) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    const item = wanted.get(msg.properties.messageId);
    if (!item) continue;
    const reason = (msg.properties.headers || {})["x-execbus-reason"];
    found[item.name] = { reason: reason === undefined ? null : String(reason) };
  }
  await ch.close();
  for (const s of sent) {
    expect(found[s.name] && found[s.name].reason, `dead letter of "${s.name}" with x-execbus-reason`, found);
  }
  return { dead: found, replies: sent.map((s) => `${s.name}: ${s.message}`) };
};

// ---------------------------------------------------------------------------------------

async function main() {
  const { validators, errors } = loadSchemas(DOCS);
  report.schemas = { compiled: Object.keys(validators), errors };
  report.asyncapi = await parseAsyncApi(DOCS);
  const peer = new Peer(validators);
  await peer.open();
  const only = process.env.CONTRACT_ONLY ? new Set(process.env.CONTRACT_ONLY.split(",")) : null;
  try {
    for (const [name, check] of Object.entries(checks)) {
      if (only && !only.has(name)) continue;
      const t0 = Date.now();
      try {
        const info = await check(peer);
        report.checks.push({ name, ok: true, ms: Date.now() - t0, info });
      } catch (err) {
        const error = err instanceof Failure ? err.message : String(err.stack || err);
        report.checks.push({ name, ok: false, ms: Date.now() - t0, error });
      }
    }
    // Late replies: a reply is sent once (rarely twice, the same content).
    report.late_replies = [...peer.lateReplies.entries()].map(([corr, list]) => ({ corr, count: list.length }));
    report.duplicate_events = peer.duplicates;
  } finally {
    await peer.close();
  }
  report.ok =
    report.schemas.errors.length === 0 &&
    report.asyncapi.parsed &&
    report.asyncapi.diagnostics.length === 0 &&
    report.violations.length === 0 &&
    report.checks.length > 0 &&
    report.checks.every((c) => c.ok);
}

main()
  .catch((err) => {
    report.fatal = String(err.stack || err);
  })
  .finally(() => {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    process.exit(report.ok ? 0 : 1);
  });
