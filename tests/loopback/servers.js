// The two servers the differential test compares: a real LoopBack 3 app (in this process,
// memory connector) and our gateway in embedded mode (a child process, the binary that
// `cargo build --workspace --bins` built). Both serve `/api/{Model plural}`.
//
// The deadlines, requests and the SSE reader are tests/js/processes.mjs, shared with the
// other Node test packages. Every wait is on a signal (the log line with the address, an
// answer) and has a deadline.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import readline from 'node:readline';
import loopback from 'loopback';
import * as shared from '../js/processes.mjs';

export const { REPO } = shared;

/** How long one step (a start, a request) may take. */
export const STEP_MS = 10_000;

/** Rejects after `ms` with a message naming what was awaited. */
export const within = (what, promise, ms = STEP_MS) => shared.within(what, promise, ms);

/** One request with a deadline: `{status, headers, body}` (the body parsed when JSON). */
export const request = (method, url, body) => shared.request(method, url, body, {}, STEP_MS);

/** An SSE response read in the background (see tests/js/processes.mjs). */
export const openEventStream = (url, headers = {}) => shared.openEventStream(url, headers, STEP_MS);

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

/** The gateway in embedded mode (its in-memory store and the REST API) on 127.0.0.1:0. */
export async function startGateway() {
  const child = spawn(shared.binary('gateway'), [], {
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
        const found = shared.logField(line, 'addr');
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

