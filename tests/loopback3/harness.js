// The mixin tests' harness: a real `redis-server`, real `gateway` pods (Redis mode) and a
// real `publisher` as child processes on free ports (the binaries `cargo build --workspace
// --bins` built, under $CARGO_TARGET_DIR), and a LoopBack 3 app in this process (memory
// connector, REST at /api) whose models carry the mixin (clients/loopback3).
//
// The processes, deadlines, requests and the SSE reader are tests/js/processes.mjs, shared
// with the other Node test packages. Every wait is on a signal (a log line, an answer, an
// event) and has a deadline; nothing sleeps for a time.

import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import {
  Child, REPO, STEP_MS, binary, cleanup, freePort, logField, openEventStream, request, startRedis,
  waitOk, within,
} from '../js/processes.mjs';
import loopback from 'loopback';

export { REPO, STEP_MS, cleanup, freePort, openEventStream, request, within };

/** The mixin package, installed from the repo (`file:../../clients/loopback3`). */
export const mixin = createRequire(import.meta.url)('@changestream/loopback3');

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
    addr = await child.waitForLine('listening address', (line) => logField(line, 'addr'));
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
