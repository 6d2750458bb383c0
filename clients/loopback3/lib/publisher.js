'use strict';
// The sender: a bounded queue per process, drained in order per topic (one request in
// flight per topic), each request a `POST /publish` array with an `Idempotency-Key` that
// stays the same across its retries, retried with capped, jittered backoff on connection
// errors, timeouts, 408, 429 and 5xx (the publisher's 503 REDIS_UNAVAILABLE and
// OUTCOME_UNKNOWN among them).
//
// Owns delivery to the publisher only: it never sees hook contexts or model instances,
// just the JSON text of each change (serialized when the hook ran, so later changes to an
// instance cannot leak into an earlier change).

const crypto = require('node:crypto');

/** Defaults of the settings a mixin's options may change (README, "Options"). */
const DEFAULTS = Object.freeze({
  // Changes waiting in this process, all topics together. A change that finds the queue
  // full is dropped: counted (`dropped`) and logged, never blocking the app's write.
  maxQueue: 10000,
  // Changes per request: the publisher takes up to `batch_max_items` (1000) per array.
  maxBatch: 100,
  // Body bytes per request, below the publisher's `body_limit` (100 KiB by default). A
  // single change larger than this still goes, alone.
  maxBatchBytes: 64 * 1024,
  // Longest wait for one attempt (request and answer), ms. A timed-out attempt is retried
  // with the same key: the publisher answers a retry of a write it made as a replay.
  timeout: 10000,
  // Backoff between attempts of one request: doubling from retryBase to retryCap, each
  // delay drawn between half and all of that (jitter), ms.
  retryBase: 100,
  retryCap: 5000,
  // A request still failing after this long is given up (`failed`): well inside the
  // publisher's idempotency_ttl (24 h), so no retry can come after its key was forgotten.
  retryFor: 60 * 60 * 1000,
});

/** Statuses worth another attempt: the request may succeed later unchanged. */
function retryable(status) {
  return status === 408 || status === 429 || status >= 500;
}

/** What a failed fetch was, for a log line: the cause's code where there is one. */
function describe(error) {
  if (error && error.name === 'TimeoutError') return 'timed out';
  const cause = error && error.cause;
  if (cause && (cause.code || cause.message)) return `${error.message}: ${cause.code || cause.message}`;
  return String((error && error.message) || error);
}

/** `Retry-After` in ms (seconds form only), or 0. */
function retryAfterMs(value) {
  const seconds = Number(value);
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
}

class Publisher {
  /**
   * @param {object} settings `publisher` (base URL), `token` (a string, or a function
   *   returning one or a promise of one, asked before each attempt), `logger`
   *   (`warn`/`error`), and the DEFAULTS keys.
   */
  constructor(settings) {
    this.url = `${String(settings.publisher).replace(/\/+$/, '')}/publish`;
    this.token = settings.token;
    this.logger = settings.logger;
    for (const key of Object.keys(DEFAULTS)) {
      this[key] = settings[key] === undefined ? DEFAULTS[key] : Number(settings[key]);
    }
    // Keys are unique across processes and restarts: a random prefix per process, then the
    // sequence number of the request's first change. A request is fixed when first sent
    // and resent byte for byte, so its key always means the same request.
    this.prefix = `lb3-${crypto.randomBytes(12).toString('base64url')}`;
    this.seq = 0;
    /** topic -> {slots, running}: the changes waiting for it, in hook order. */
    this.topics = new Map();
    /** Changes (and slots whose changes are still being read) waiting, all topics. */
    this.queued = 0;
    this.counts = { published: 0, replayed: 0, retried: 0, dropped: 0, failed: 0 };
    /** Callbacks of `flush()` calls, run when nothing is queued. */
    this.idleWaiters = [];
    this.lastDropLog = 0;
    this.dropsSinceLog = 0;
  }

  /**
   * Queues changes of `topic`: `items` is `[{change, last}]` or a promise of such a list
   * (its place in the order is held meanwhile). Never throws, never waits.
   */
  enqueue(topic, items) {
    const queue = this.queueOf(topic);
    if (typeof items.then === 'function') {
      if (this.queued >= this.maxQueue) {
        items.then((list) => this.drop(topic, list.length), () => this.drop(topic, 1));
        return;
      }
      let ready;
      const slot = { pending: true, ready: new Promise((resolve) => { ready = resolve; }) };
      this.queued += 1;
      queue.slots.push(slot);
      items.then(
        (list) => this.fill(topic, queue, slot, list, ready),
        (error) => {
          this.fail(topic, 1, `reading the records of a bulk change failed: ${describe(error)}`);
          this.fill(topic, queue, slot, [], ready);
        },
      );
    } else {
      const texts = items.map((item) => itemText(topic, item));
      if (texts.length === 0) return;
      if (this.queued + texts.length > this.maxQueue) {
        this.drop(topic, texts.length);
        return;
      }
      this.queued += texts.length;
      for (const text of texts) queue.slots.push({ text, seq: ++this.seq });
    }
    this.kick(topic, queue);
  }

  /** Counters since start: published, replayed, retried, dropped, failed; and queued. */
  stats() {
    return { ...this.counts, queued: this.queued };
  }

  /**
   * Resolves `{drained: true, pending: 0}` once every queued change is published or
   * given up, or `{drained: false, pending}` after `timeoutMs`.
   */
  flush(timeoutMs = 10000) {
    if (this.queued === 0) return Promise.resolve({ drained: true, pending: 0 });
    return new Promise((resolve) => {
      const waiter = () => {
        clearTimeout(timer);
        resolve({ drained: true, pending: 0 });
      };
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter);
        resolve({ drained: false, pending: this.queued });
      }, timeoutMs);
      this.idleWaiters.push(waiter);
    });
  }

  queueOf(topic) {
    let queue = this.topics.get(topic);
    if (!queue) {
      queue = { slots: [], running: false };
      this.topics.set(topic, queue);
    }
    return queue;
  }

  /** A held slot gets its changes (in its place), or nothing; the sender is woken. */
  fill(topic, queue, slot, items, ready) {
    this.queued -= 1;
    const at = queue.slots.indexOf(slot);
    let texts = [];
    try {
      texts = items.map((item) => itemText(topic, item));
    } catch (error) {
      this.fail(topic, items.length, `a change could not be serialized: ${describe(error)}`);
    }
    if (this.queued + texts.length > this.maxQueue) {
      this.drop(topic, texts.length);
      texts = [];
    }
    this.queued += texts.length;
    queue.slots.splice(at, 1, ...texts.map((text) => ({ text, seq: ++this.seq })));
    ready();
    this.notifyIfIdle();
  }

  kick(topic, queue) {
    if (queue.running) return;
    queue.running = true;
    this.run(topic, queue).finally(() => {
      queue.running = false;
      if (queue.slots.length > 0) this.kick(topic, queue);
      else if (this.topics.get(topic) === queue) this.topics.delete(topic);
      this.notifyIfIdle();
    });
  }

  /** Sends the topic's changes in order, one request at a time, until none is left. */
  async run(topic, queue) {
    while (queue.slots.length > 0) {
      const head = queue.slots[0];
      if (head.pending) {
        await head.ready;
        continue;
      }
      const batch = [];
      let bytes = 2;
      for (const slot of queue.slots) {
        if (slot.pending) break;
        const size = slot.text.length + 1;
        if (batch.length > 0 && (batch.length >= this.maxBatch || bytes + size > this.maxBatchBytes)) break;
        batch.push(slot);
        bytes += size;
      }
      await this.send(topic, batch);
      queue.slots.splice(0, batch.length);
      this.queued -= batch.length;
    }
  }

  /** One request until it is answered 2xx, refused, or retryFor has passed. Never throws. */
  async send(topic, batch) {
    const body = `[${batch.map((slot) => slot.text).join(',')}]`;
    const key = `${this.prefix}-${batch[0].seq}`;
    const started = Date.now();
    const n = batch.length;
    for (let attempt = 0; ; attempt += 1) {
      let detail;
      let again = true;
      let wait = 0;
      try {
        const headers = { 'content-type': 'application/json', 'idempotency-key': key };
        const token = typeof this.token === 'function' ? await this.token() : this.token;
        if (token) headers.authorization = `Bearer ${token}`;
        const response = await fetch(this.url, {
          method: 'POST',
          headers,
          body,
          signal: AbortSignal.timeout(this.timeout),
        });
        const text = await response.text();
        if (response.ok) {
          this.counts.published += n;
          if (response.headers.get('idempotent-replayed') === 'true') this.counts.replayed += n;
          if (attempt > 0) {
            this.logger.warn(`[changestream] ${topic}: ${n} change(s) published after ${attempt} retr${attempt === 1 ? 'y' : 'ies'} (key ${key})`);
          }
          return;
        }
        detail = `${response.status} ${text.slice(0, 300)}`;
        again = retryable(response.status);
        wait = retryAfterMs(response.headers.get('retry-after'));
      } catch (error) {
        detail = describe(error);
      }
      const ceiling = Math.min(this.retryCap, this.retryBase * 2 ** Math.min(attempt, 30));
      const delay = Math.min(Math.max(ceiling / 2 + Math.random() * (ceiling / 2), wait), 60000);
      if (!again || Date.now() + delay - started > this.retryFor) {
        this.fail(topic, n, `${detail}${again ? `; gave up after ${attempt + 1} attempts` : ' (not retried)'} (key ${key})`);
        return;
      }
      this.counts.retried += 1;
      if (attempt === 0 || attempt % 10 === 0) {
        this.logger.warn(`[changestream] ${topic}: publishing ${n} change(s) failed (${detail}); retrying with the same key ${key}`);
      }
      await new Promise((resolve) => setTimeout(resolve, delay).unref());
    }
  }

  fail(topic, n, why) {
    this.counts.failed += n;
    this.logger.error(`[changestream] ${topic}: ${n} change(s) not published: ${why}`);
  }

  /** A full queue: the changes are counted and logged (at most every 10 s), not kept. */
  drop(topic, n) {
    this.counts.dropped += n;
    this.dropsSinceLog += n;
    const now = Date.now();
    if (now - this.lastDropLog >= 10000) {
      this.logger.error(`[changestream] ${topic}: queue full (maxQueue ${this.maxQueue}): ${this.dropsSinceLog} change(s) dropped, ${this.counts.dropped} in all`);
      this.lastDropLog = now;
      this.dropsSinceLog = 0;
    }
    this.notifyIfIdle();
  }

  notifyIfIdle() {
    if (this.queued !== 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const waiter of waiters) waiter();
  }
}

/** One `POST /publish` item's JSON: the change as LoopBack's bytes, and `last` if known. */
function itemText(topic, { change, last }) {
  const changeText = JSON.stringify(change);
  const lastText = last === undefined ? '' : `,"last":${JSON.stringify(last)}`;
  return `{"topic":${JSON.stringify(topic)},"change":${changeText}${lastText}}`;
}

module.exports = { Publisher, DEFAULTS };
