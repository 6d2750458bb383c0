// What the Node test packages under tests/ share (tests/browser, tests/loopback,
// tests/loopback3, tests/openapi): the workspace binaries, child processes whose log lines
// can be awaited, a `redis-server` on a free port, deadlines, one request, an SSE reader.
// Plain Node, no dependencies, so no package installs another's (each imports this file by
// its relative path). Every wait is on a signal (a log line, an answer, an event) and has
// a deadline; nothing sleeps for a fixed time.

import { spawn } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** How long one step (a start, a request, an event) may take unless a caller says. */
export const STEP_MS = 15_000;

/** A workspace binary built by `cargo build --workspace --bins` (under $CARGO_TARGET_DIR). */
export function binary(name) {
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
export async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** A child process whose output lines (of `stream`) are kept and can be awaited. */
export class Child extends EventEmitter {
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

/**
 * A JSON log line's value for `key` (tracing's JSON, fields possibly nested under
 * `fields`), or undefined; with `message`, only from a line with that message.
 */
export function logField(line, key, message) {
  let entry;
  try {
    entry = JSON.parse(line);
  } catch {
    return undefined;
  }
  const fields = { ...entry, ...(entry.fields ?? {}) };
  if (message !== undefined && fields.message !== message) return undefined;
  return fields[key];
}

/**
 * `redis-server` on a free port, ready when it says so; without persistence, or with
 * `appendonly` (every write fsynced) so a `kill()` and `start()` keep the data.
 */
export async function startRedis({ appendonly = false } = {}) {
  let lastError;
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const port = await freePort();
    const dir = await mkdtemp(path.join(tmpdir(), 'cs-redis-'));
    const spawnRedis = () => new Child(`redis:${port}`, 'redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '',
      ...(appendonly ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no']),
      '--daemonize', 'no', '--loglevel', 'notice',
    ], {}, 'stdout');
    const ready = (child) =>
      child.waitForLine('ready', (l) => (l.includes('Ready to accept connections') ? true : undefined));
    let child = spawnRedis();
    try {
      await ready(child);
      return {
        url: `redis://127.0.0.1:${port}/`,
        /** SIGKILL: what survives is what the AOF had. */
        kill: () => child.kill(),
        /** Starts again on the same port and data directory. */
        async start() {
          child = spawnRedis();
          await ready(child);
        },
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
export async function waitOk(what, url, ms = STEP_MS) {
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

/** One request with a deadline: `{status, headers, body}` (the body parsed when JSON). */
export async function request(method, url, body, headers = {}, ms = STEP_MS) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(ms),
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
 * (`{event, data, id}`), waited for with a deadline (`ms` unless the call gives one);
 * `take(n, what)` the `data` of the next `n` events named `data`; `close()` aborts it.
 * Comments (`:ok`, heartbeats) and blocks without data (`retry:`, a bare `id:`) are not
 * events.
 */
export async function openEventStream(url, headers = {}, ms = STEP_MS) {
  const controller = new AbortController();
  const response = await within(`open ${url}`, fetch(url, {
    headers: { accept: 'text/event-stream', ...headers },
    signal: controller.signal,
  }), ms);
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
    async next(what, wait = ms) {
      while (events.length === 0) {
        if (ended) throw ended;
        await within(what, new Promise((resolve) => { wake = resolve; }), wait);
      }
      return events.shift();
    },
    /** The `data` of the next `n` events named `data`, failing on any other event. */
    async take(n, what, wait = ms) {
      const out = [];
      while (out.length < n) {
        const event = await stream.next(`${what} (${out.length} of ${n})`, wait);
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
