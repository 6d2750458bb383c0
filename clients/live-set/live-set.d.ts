// Types of live-set.js (the same file the gateway serves at /client/live-set.js). Checked
// by `tsc --noEmit` together with examples/*.ts(x) in scripts/test.

/** A record's id (LoopBack's `target`): `0` and strings are ids like any other. */
export type LiveSetId = string | number;

/** What a record is when no type is given: a JSON object. */
export type LiveSetRecord = Record<string, unknown>;

/** A LoopBack `where` filter, as the change stream and the REST API take it. */
export type LiveSetWhere = Record<string, unknown>;

/** The connection's state, as `onStatus` reports it. */
export type LiveSetStatus = 'connecting' | 'live' | 'reconnecting' | 'closed';

/** Where a change came from: its topic (the collection) and its event id. */
export interface LiveSetChangeOrigin {
  /** The collection (`MyModels`), or the topic of a multi-topic `/events` stream. */
  topic: string;
  /** The SSE event id (`1732345678901-0`, or an opaque cursor on `/events`); `''` if none. */
  id: string;
}

/** A `create` or an `update`: the whole record after the change. */
export interface LiveSetUpsert<T = LiveSetRecord> extends LiveSetChangeOrigin {
  type: 'create' | 'update';
  target: LiveSetId;
  where?: LiveSetWhere;
  data: T;
}

/** A `remove` (also what a filtered stream sends for a record that left its filter). */
export interface LiveSetRemove extends LiveSetChangeOrigin {
  type: 'remove';
  target: LiveSetId;
  where?: LiveSetWhere;
}

/** A topic's records were replaced by a snapshot or a (re)load. */
export interface LiveSetLoad {
  type: 'load';
  topic: string;
}

/** What `onChange` is called with: an applied change, or a topic (re)loaded. */
export type LiveSetChange<T = LiveSetRecord> = LiveSetUpsert<T> | LiveSetRemove | LiveSetLoad;

/**
 * The JSON of an `event: reset` (history lost while away). Every key is optional: a reset
 * whose data is not JSON still means history was lost, and arrives as `{}`.
 */
export interface LiveSetResetInfo {
  /** `history-trimmed` or `position-unknown` from this gateway. */
  reason?: 'history-trimmed' | 'position-unknown' | (string & {});
  /** The position asked for. */
  lastEventId?: string;
  /** The position the stream continues from. */
  resumeFrom?: string;
  /** On `/events`: the one topic that was reset. */
  topic?: string;
}

/**
 * What `onError` is given: a failed load (retried), a server `event: error` (its
 * `message`), or a stream refused before it ever opened, with the HTTP `status` (e.g. 400
 * for a filter the gateway cannot honour, 409 for a raw-publish topic).
 */
export interface LiveSetError extends Error {
  status?: number;
}

/** An event as live-set reads it from an EventSource (a `MessageEvent` in browsers). */
export interface LiveSetSourceEvent {
  /** The frame's data (absent on the browser's own connection errors). */
  readonly data?: unknown;
  readonly lastEventId?: string;
}

/** What live-set needs of an EventSource: the browser's, a polyfill, or a test double. */
export interface LiveSetEventSource {
  /** `2` (CLOSED) once the source gave up for good. */
  readonly readyState: number;
  readonly url: string;
  addEventListener(type: string, listener: (event: LiveSetSourceEvent) => void): void;
  close(): void;
}

/** A constructor like `EventSource`: called with the stream URL (an absolute string). */
export type LiveSetEventSourceConstructor = new (url: string) => LiveSetEventSource;

export interface LiveSetOptions<T = LiveSetRecord> {
  /**
   * How the records are got without a snapshot. `true` (default): GET the collection from
   * the REST API (`api`/{topic}, with the stream's `options` query as `filter`); a
   * function: called with the topic, returns the records; `false`: start empty (nothing to
   * reload on reset; turns snapshots off too).
   */
  load?: boolean | ((topic: string) => T[] | PromiseLike<T[]>) | undefined;
  /**
   * Ask for the records in the stream itself (`snapshot=true`). Default: `true` when `load`
   * is the default REST load, else `false`. `false` forces the GET + buffer path (e.g. for
   * a LoopBack server).
   */
  snapshot?: boolean | undefined;
  /**
   * ms after the stream opens (again from each reopen) within which a snapshot page must
   * arrive; else the set loads by GET. Default `10000`.
   */
  snapshotTimeout?: number | undefined;
  /** REST base URL. Default: the path before `/{topic}/change-stream`, or `/api` beside `/events`. */
  api?: string | undefined;
  /** The records' id property (LoopBack's idName). Default `'id'`. */
  idName?: string | undefined;
  /** After each applied change, and after each snapshot or (re)load (`{type: 'load'}`). */
  onChange?: ((change: LiveSetChange<T>, set: LiveSet<T>) => void) | undefined;
  /** `event: reset` arrived; the set then takes the snapshot that follows it (or reloads). */
  onReset?: ((info: LiveSetResetInfo, set: LiveSet<T>) => void) | undefined;
  /** The connection's state. */
  onStatus?: ((status: LiveSetStatus, set: LiveSet<T>) => void) | undefined;
  /** A failed load, a server `event: error`, a refused stream. Default: `console.warn`. */
  onError?: ((error: LiveSetError, set: LiveSet<T>) => void) | undefined;
  /**
   * A JWT for a gateway with auth on: `?access_token=` on the stream, `Authorization:
   * Bearer` on the load. A function is asked again for every (re)open and load, so
   * short-lived tokens renew themselves. A falsy value sends none.
   */
  token?: string | (() => string | null | undefined | PromiseLike<string | null | undefined>) | undefined;
  /** The EventSource constructor to use. Default: `globalThis.EventSource`. */
  EventSource?: LiveSetEventSourceConstructor | undefined;
  /** Longest wait (ms) before reopening or retrying a load. Default `30000`. */
  maxBackoff?: number | undefined;
}

/**
 * A live, ordered collection kept by a change stream (`/api/{c}/change-stream` or
 * `/events?topic=A&topic=B`). Opens its EventSource at once; `close()` ends it.
 */
export class LiveSet<T = LiveSetRecord> {
  constructor(url: string | URL, options?: LiveSetOptions<T>);
  /** Resolves (with this set) once the stream is open and every topic's first records are in. */
  readonly ready: Promise<this>;
  /** The records, in order (on `/events`: topic by topic, in URL order). A new array each time. */
  get records(): T[];
  /** How many records are held. */
  get size(): number;
  /** The record with this id (`topic` needed only on a multi-topic stream). */
  get(id: LiveSetId, topic?: string): T | undefined;
  /** The id of the last event received: where a reconnect resumes (`''` before any). */
  get lastEventId(): string;
  /** Whether the set takes its records from in-band snapshots (false: it loads by GET). */
  get snapshots(): boolean;
  /**
   * Loads every topic again by GET (changes arriving meanwhile are kept); a topic whose
   * snapshot pages are arriving is left to its snapshot. Resolves when all are in.
   */
  reload(): Promise<void[]>;
  /** Closes the stream; no more callbacks (but a last `onStatus('closed')`). */
  close(): void;
}

/** `new LiveSet(url, options)`. */
export function liveSet<T = LiveSetRecord>(url: string | URL, options?: LiveSetOptions<T>): LiveSet<T>;
