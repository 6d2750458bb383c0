// The mixin tests' harness: a real `redis-server`, real `gateway` pods (Redis mode) and a
// real `publisher` as child processes on free ports (the binaries `cargo build --workspace
// --bins` built, under $CARGO_TARGET_DIR), and a LoopBack 3 app in this process (memory
// connector, REST at /api) whose models carry the mixin (clients/loopback3).
//
// Borrowed from tests/browser/harness.js (not imported: that module loads playwright-core,
// which this package does not need) and tests/loopback/servers.js. Every wait is on a
// signal (a log line, an answer, an event) and has a deadline; nothing sleeps for a time.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import loopback from 'loopback';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** How long one step (a start, a request, an event) may take. */
export const STEP_MS = 15_000;

/** The mixin package, installed from the repo (`file:../../clients/loopback3`). */
export const mixin = createRequire(import.meta.url)('@changestream/loopback3');

/** A workspace binary built by `cargo build --workspace --bins`. */
function binary(name) {
  const dir = process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target');
  const file = path.join(dir, 'debug', name);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`cargo build --workspace --bins\` first`);
  }
  return file;
}

/** Rejects after `ms` with a message naming what was awaited. */
export async function within(what, promise, ms = STEP_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** A free TCP port on 127.0.0.1 (may be taken again before use: callers retry). */
async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** A child process whose output lines are kept and can be awaited. */
class Child extends EventEmitter {
  constructor(name, file, args, env, stream) {
    super();
    this.name = name;
    this.lines = [];
    this.process = spawn(file, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', stream === 'stdout' ? 'pipe' : 'ignore', stream === 'stderr' ? 'pipe' : 'ignore'],
    });
    this.exited = new Promise((resolve) => this.process.once('exit', (code, signal) => resolve({ code, signal })));
    this.exited.then(() => this.emit('exit'));
    readline.createInterface({ input: this.process[stream] }).on('line', (line) => {
      this.lines.push(line);
      this.emit('line', line);
    });
  }

  /** The first line (already seen or to come) for which `match` returns a value. */
  waitForLine(what, match, ms = STEP_MS) {
    for (const line of this.lines) {
      const found = match(line);
      if (found !== undefined) return Promise.resolve(found);
    }
    return within(`${this.name}: ${what}`, new Promise((resolve, reject) => {
      const onLine = (line) => {
        const found = match(line);
        if (found !== undefined) {
          this.off('line', onLine);
          this.off('exit', onExit);
          resolve(found);
        }
      };
      const onExit = () => {
        this.off('line', onLine);
        reject(new Error(`${this.name} exited before: ${what}\n${this.lines.slice(-20).join('\n')}`));
      };
      this.on('line', onLine);
      this.once('exit', onExit);
    }), ms);
  }

  /** SIGKILL (no drain, no goodbye) and wait for the exit. */
  async kill() {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
    await within(`${this.name} to exit`, this.exited);
  }
}

/** A JSON log line's `addr` (tracing's JSON, fields possibly nested under `fields`). */
function logAddr(line) {
  try {
    const entry = JSON.parse(line);
    return entry.addr ?? entry.fields?.addr;
  } catch {
    return undefined;
  }
}

/** `redis-server` on a free port without persistence, ready when it says so. */
export async function startRedis() {
  let lastError;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const port = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'cs-lb3-redis-'));
    const child = new Child(`redis:${port}`, 'redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no',
      '--daemonize', 'no', '--loglevel', 'notice',
    ], {}, 'stdout');
    try {
      await child.waitForLine('ready', (l) => (l.includes('Ready to accept connections') ? true : undefined));
      return {
        url: `redis://127.0.0.1:${port}/`,
        async stop() {
          await child.kill();
          await rm(dir, { recursive: true, force: true });
        },
      };
    } catch (error) {
      lastError = error; // most likely the port was taken meanwhile
      await child.kill();
      await rm(dir, { recursive: true, force: true });
    }
  }
  throw lastError;
}

/** Polls `url` until it answers 200; each poll and the whole wait are bounded. */
async function waitOk(what, url, ms = STEP_MS) {
  const until = Date.now() + ms;
  for (;;) {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await response.arrayBuffer();
      if (response.status === 200) return;
    } catch {
      // not answering yet
    }
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20)); // poll interval, not a wait
  }
}

/**
 * A server binary; resolves once it logged its address and `/readyz` answers 200.
 * `restart()` (after `kill()`) starts it again on the same address, so a client that
 * keeps the URL reaches the new process.
 */
async function startServer(name, listenVar, env) {
  let child;
  let addr = '127.0.0.1:0';
  const spawnIt = async () => {
    child = new Child(name, binary(name), [], { RUST_LOG: 'info', ...env, [listenVar]: addr }, 'stderr');
    addr = await child.waitForLine('listening address', logAddr);
    await waitOk(`${name} ready`, `http://${addr}/readyz`);
  };
  await spawnIt();
  return {
    base: `http://${addr}`,
    /** SIGKILL: requests in flight get a reset, nothing is drained. */
    kill: () => child.kill(),
    restart: spawnIt,
    stop: () => child.kill(),
  };
}

/** A gateway pod of the fleet (Redis mode). */
export function startGateway({ redisUrl, env = {} }) {
  return startServer('gateway', 'GATEWAY_LISTEN', { GATEWAY_REDIS_URL: redisUrl, GATEWAY_RETRY: '300ms', ...env });
}

/** The publisher on Redis (the REST API and `POST /publish`). */
export function startPublisher({ redisUrl, env = {} }) {
  return startServer('publisher', 'PUBLISHER_LISTEN', { PUBLISHER_REDIS_URL: redisUrl, ...env });
}

/** A Redis, one publisher and `gateways` gateway pods; `stop()` ends them all. */
export async function startFleet({ gateways = 2, gatewayEnv = {}, publisherEnv = {} } = {}) {
  const redis = await startRedis();
  const started = [redis];
  try {
    const publisher = await startPublisher({ redisUrl: redis.url, env: publisherEnv });
    started.push(publisher);
    const pods = [];
    for (let i = 0; i < gateways; i += 1) {
      const pod = await startGateway({ redisUrl: redis.url, env: gatewayEnv });
      started.push(pod);
      pods.push(pod);
    }
    return {
      redis,
      publisher,
      gateways: pods,
      async stop() {
        for (const server of started.reverse()) await server.stop();
      },
    };
  } catch (error) {
    for (const server of started.reverse()) await server.stop();
    throw error;
  }
}

/** A silent logger that keeps what the mixin said, for assertions and failure messages. */
export function memoryLogger() {
  const lines = [];
  return {
    lines,
    warn: (message) => lines.push(`warn: ${message}`),
    error: (message) => lines.push(`error: ${message}`),
  };
}

/**
 * A LoopBack 3 app on the memory connector, REST at /api, on 127.0.0.1 and a free port.
 * `models` maps each model name to its definition settings (properties, mixins, ...); each
 * is a PersistedModel on the memory datasource, public. The mixin is registered as
 * `ChangeStreamPublisher`, as loopback-boot registers it from `_meta.mixins`.
 */
export async function startApp(models) {
  const app = loopback({ localRegistry: true, loadBuiltinModels: true });
  app.set('remoting', { errorHandler: { log: false } });
  app.registry.modelBuilder.mixins.define('ChangeStreamPublisher', mixin);
  app.dataSource('db', { connector: 'memory' });
  const made = {};
  for (const [name, settings] of Object.entries(models)) {
    const model = app.registry.createModel({ name, base: 'PersistedModel', ...settings });
    app.model(model, { dataSource: 'db', public: true });
    made[name] = model;
  }
  app.use('/api', loopback.rest());
  const server = app.listen(0, '127.0.0.1');
  await within('LoopBack listening', once(server, 'listening'));
  return {
    app,
    models: made,
    base: `http://127.0.0.1:${server.address().port}`,
    async stop() {
      server.closeAllConnections();
      server.close();
      await within('LoopBack closed', once(server, 'close'));
    },
  };
}

/** One request with a deadline: `{status, body}` (the body parsed when it is JSON). */
export async function request(method, url, body, headers = {}) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: kept as text
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

/**
 * An SSE response read in the background: `next(what)` is its next event
 * (`{event, data, id}`), waited for with a deadline; `close()` aborts it. Comments
 * (`:ok`, heartbeats) and blocks without data (`retry:`, a bare `id:`) are not events.
 */
export async function openEventStream(url, headers = {}) {
  const controller = new AbortController();
  const response = await within(`open ${url}`, fetch(url, {
    headers: { accept: 'text/event-stream', ...headers },
    signal: controller.signal,
  }));
  if (response.status !== 200 || !response.headers.get('content-type')?.startsWith('text/event-stream')) {
    controller.abort();
    throw new Error(`${url}: ${response.status} ${response.headers.get('content-type')}`);
  }
  const events = [];
  let ended = null;
  let wake = () => {};
  const pump = async () => {
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const event = { event: 'message', data: [], id: undefined };
        for (const line of block.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const name = colon < 0 ? line : line.slice(0, colon);
          const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (name === 'data') event.data.push(value);
          else if (name === 'event') event.event = value;
          else if (name === 'id') event.id = value;
        }
        if (event.data.length > 0) {
          events.push({ ...event, data: event.data.join('\n') });
          wake();
        }
      }
    }
    throw new Error(`${url}: the stream ended`);
  };
  pump().catch((error) => {
    ended = error;
    wake();
  });
  const stream = {
    async next(what, ms = STEP_MS) {
      while (events.length === 0) {
        if (ended) throw ended;
        await within(what, new Promise((resolve) => { wake = resolve; }), ms);
      }
      return events.shift();
    },
    /** The `data` of the next `n` events named `data`, failing on any other event. */
    async take(n, what, ms = STEP_MS) {
      const out = [];
      while (out.length < n) {
        const event = await stream.next(`${what} (${out.length} of ${n})`, ms);
        if (event.event !== 'data') throw new Error(`${what}: unexpected event ${event.event}: ${event.data}`);
        out.push(event.data);
      }
      return out;
    },
    close() {
      controller.abort();
    },
  };
  return stream;
}

/**
 * `Model.createChangeStream()` in this process (LoopBack's own), each change kept as
 * `JSON.stringify` of it, the bytes LoopBack's REST change stream sends in `data:`.
 */
export async function loopbackChanges(Model) {
  const seen = [];
  const stream = await Model.createChangeStream();
  stream.on('data', (change) => seen.push(JSON.stringify(change)));
  return {
    seen,
    /** What arrived since the last call. */
    drain() {
      return seen.splice(0, seen.length);
    },
    close() {
      stream.destroy();
    },
  };
}

/** An HS256 JWT for `claims` (what the publisher and gateways check with their secret). */
export function jwt(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Runs `fn` at the end of the test, newest first (node:test's `t.after` order is FIFO). */
export function cleanup(t) {
  const stack = [];
  t.after(async () => {
    for (const fn of stack.reverse()) {
      try {
        await fn();
      } catch (error) {
        console.error('cleanup:', error);
      }
    }
  });
  return (fn) => stack.push(fn);
}
