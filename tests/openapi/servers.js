// The servers whose documents are checked: a redis-server child on a free port, the
// publisher binary against it, and the gateway binary in embedded mode (no Redis), each on
// 127.0.0.1:0, both built by `cargo build --workspace --bins`. Every wait is on a signal
// (Redis's ready line, the log line with the address) and has a deadline.
//
// The deadlines, binaries and Redis are tests/js/processes.mjs, shared with the other
// Node test packages.

import { spawn } from 'node:child_process';
import readline from 'node:readline';
import * as shared from '../js/processes.mjs';

export const { REPO, startRedis } = shared;
const { binary } = shared;
const logAddr = (line) => shared.logField(line, 'addr');

/** How long one step (a start, a request) may take. */
export const STEP_MS = 10_000;

/** Rejects after `ms` with a message naming what was awaited. */
export const within = (what, promise, ms = STEP_MS) => shared.within(what, promise, ms);

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
