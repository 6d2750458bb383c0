// The two servers the differential test compares: a real LoopBack 3 app (in this process,
// memory connector) and our gateway in embedded mode (a child process, the binary that
// `cargo build --workspace --bins` built). Both serve `/api/{Model plural}`.
//
// The gateway start is borrowed from tests/browser/harness.js (`startServer`): not
// imported, since that module loads playwright-core, which this package does not need.
// Every wait is on a signal (the log line with the address, an answer) and has a deadline.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import loopback from 'loopback';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** How long one step (a start, a request) may take. */
export const STEP_MS = 10_000;

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

/**
 * A LoopBack 3 app on the memory connector, REST at `/api`, on 127.0.0.1 and a free port.
 * `models` maps each model's name to its declared properties' names; the first is the id
 * (given by every record, as it is to the gateway). Models are `strict: false`: any other
 * property is kept as sent. Declared properties are of type `any`, for which LoopBack
 * normalizes `where` as its documentation describes (`{"eq": v}` becomes `v`, a
 * `"/^a/i"` regexp a RegExp) and which `fields` exclusion knows; it does neither for an
 * undeclared property. But `any` parses a string value as JSON on create (`"7"` is
 * stored as 7), so a property holding such strings must stay undeclared.
 */
export async function startLoopBack(models) {
  const app = loopback();
  // strong-error-handler logs every 4xx/5xx answer's stack to stderr; the test compares
  // the status codes itself.
  app.set('remoting', { errorHandler: { log: false } });
  app.dataSource('db', { connector: 'memory' });
  for (const [name, [id, ...rest]] of Object.entries(models)) {
    const properties = { [id]: { type: 'any', id: true, generated: false } };
    for (const property of rest) properties[property] = { type: 'any' };
    const model = loopback.createModel({ name, base: 'PersistedModel', strict: false, properties });
    app.model(model, { dataSource: 'db', public: true });
  }
  app.use('/api', loopback.rest());
  const server = app.listen(0, '127.0.0.1');
  await within('LoopBack listening', once(server, 'listening'));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    async stop() {
      server.closeAllConnections();
      server.close();
      await within('LoopBack closed', once(server, 'close'));
    },
  };
}

/** The gateway binary built by `cargo build --workspace --bins`. */
function gatewayBinary() {
  const dir = process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target');
  const file = path.join(dir, 'debug', 'gateway');
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`cargo build --workspace --bins\` first`);
  }
  return file;
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

/** The gateway in embedded mode (its in-memory store and the REST API) on 127.0.0.1:0. */
export async function startGateway() {
  const child = spawn(gatewayBinary(), [], {
    env: { ...process.env, RUST_LOG: 'info', GATEWAY_LISTEN: '127.0.0.1:0' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await within('gateway to exit', exited);
  };
  const lines = [];
  try {
    const addr = await within('gateway: listening address', new Promise((resolve, reject) => {
      readline.createInterface({ input: child.stderr }).on('line', (line) => {
        lines.push(line);
        const found = logAddr(line);
        if (found !== undefined) resolve(found);
      });
      exited.then(({ code, signal }) =>
        reject(new Error(`gateway exited (${code ?? signal}) before listening:\n${lines.slice(-20).join('\n')}`)));
    }));
    return { base: `http://${addr}`, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** One request with a deadline: `{status, body}` (the body parsed when it is JSON). */
export async function request(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: compared as text
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

/**
 * An SSE response read in the background: `next(what)` is its next event
 * (`{event, data, id}`), waited for with a deadline; `close()` aborts it. Comments
 * (`:ok`, heartbeats) and blocks without data (`retry:`) are not events.
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
  return {
    async next(what) {
      while (events.length === 0) {
        if (ended) throw ended;
        await within(what, new Promise((resolve) => { wake = resolve; }));
      }
      return events.shift();
    },
    close() {
      controller.abort();
    },
  };
}
