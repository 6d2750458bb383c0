// The servers whose documents are checked: a redis-server child on a free port, the
// publisher binary against it, and the gateway binary in embedded mode (no Redis), each on
// 127.0.0.1:0, both built by `cargo build --workspace --bins`. Every wait is on a signal
// (Redis's ready line, the log line with the address) and has a deadline.
//
// The binary start follows tests/loopback/servers.js (not imported: that module loads
// loopback, which this package does not need).

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

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

/** A binary built by `cargo build --workspace --bins`. */
function binary(name) {
  const dir = process.env.CARGO_TARGET_DIR ?? path.join(REPO, 'target');
  const file = path.join(dir, 'debug', name);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: run \`cargo build --workspace --bins\` first`);
  }
  return file;
}

/**
 * Starts `command` with the environment `env`, reads `stream` ('stdout' or 'stderr') line
 * by line and resolves with what `found(line)` returns first (anything but undefined). The
 * child is killed by `stop()`, and if it exits or the deadline passes first.
 */
async function startChild(what, command, args, env, stream, found) {
  const child = spawn(command, args, {
    env,
    stdio: ['ignore', stream === 'stdout' ? 'pipe' : 'ignore', stream === 'stderr' ? 'pipe' : 'ignore'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await within(`${what} to exit`, exited);
  };
  const lines = [];
  try {
    const value = await within(`${what}: ready`, new Promise((resolve, reject) => {
      readline.createInterface({ input: child[stream] }).on('line', (line) => {
        lines.push(line);
        const value = found(line);
        if (value !== undefined) resolve(value);
      });
      exited.then(({ code, signal }) =>
        reject(new Error(`${what} exited (${code ?? signal}) before it was ready:\n${lines.slice(-20).join('\n')}`)));
    }));
    return { value, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** A port free right now (the OS's pick); Redis cannot take port 0 itself. */
async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await within('a free port', new Promise((resolve) => server.once('listening', resolve)));
  const { port } = server.address();
  await within('the probe to close', new Promise((resolve) => server.close(resolve)));
  return port;
}

/** A redis-server child on a free port, without persistence: `{url, stop}`. */
export async function startRedis() {
  // Another process may take the port between the probe and Redis's bind: try again.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      const { stop } = await startChild(
        'redis-server',
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
        process.env,
        'stdout',
        (line) => (line.includes('Ready to accept connections') ? true : undefined),
      );
      return { url: `redis://127.0.0.1:${port}/`, stop };
    } catch (error) {
      if (attempt === 3) throw error;
    }
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

/** The publisher binary on 127.0.0.1:0 against `redisUrl`: `{base, stop}`. */
export async function startPublisher(redisUrl) {
  const { value: addr, stop } = await startChild(
    'publisher',
    binary('publisher'),
    [],
    { ...process.env, RUST_LOG: 'info', PUBLISHER_LISTEN: '127.0.0.1:0', PUBLISHER_REDIS_URL: redisUrl, PUBLISHER_REDIS_CLUSTER: '' },
    'stderr',
    logAddr,
  );
  return { base: `http://${addr}`, stop };
}

/** The gateway binary in embedded mode (no Redis setting) on 127.0.0.1:0: `{base, stop}`. */
export async function startGateway() {
  const env = { ...process.env, RUST_LOG: 'info', GATEWAY_LISTEN: '127.0.0.1:0' };
  // Embedded mode is the absence of both Redis settings.
  delete env.GATEWAY_REDIS_URL;
  delete env.GATEWAY_REDIS_CLUSTER;
  const { value: addr, stop } = await startChild('gateway', binary('gateway'), [], env, 'stderr', logAddr);
  return { base: `http://${addr}`, stop };
}

/** One request with a deadline: `{status, headers, text, json}` (`json` when it parses). */
export async function request(method, url, { body, headers = {} } = {}) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const streams = (response.headers.get('content-type') ?? '').startsWith('text/event-stream');
  // An event stream does not end: its head is the answer.
  const text = streams ? '' : await within(`${method} ${url}: body`, response.text());
  if (streams) await response.body.cancel();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: response.status, headers: response.headers, text, json };
}
