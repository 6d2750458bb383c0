// Types of react.js, the `@changestream/live-set/react` entry point. They need no React
// types: the hook takes and returns plain values.

import type { LiveSet, LiveSetError, LiveSetOptions, LiveSetRecord, LiveSetStatus } from './live-set.js';

export type { LiveSet, LiveSetOptions, LiveSetRecord, LiveSetStatus, LiveSetError } from './live-set.js';

/** What `useLiveSet` returns; a new object whenever something in it changed. */
export interface LiveSetView<T = LiveSetRecord> {
  /** The records, in order; a new array after each change. `[]` until the first are in. */
  readonly records: readonly T[];
  /** The connection's state; `'closed'` while `url` is null. */
  readonly status: LiveSetStatus;
  /** The last error reported; cleared when the stream is live again or a topic is loaded. */
  readonly error: LiveSetError | null;
  /** Whether the stream is open and every topic's first records are in (`set.ready`). */
  readonly ready: boolean;
  /** The open set (`set.get(id)`, `set.reload()`); null before it is opened and while `url` is null. */
  readonly set: LiveSet<T> | null;
}

/**
 * Opens a live set on mount and closes it (its EventSource with it) on unmount, or when
 * `url` or a non-function option changes (options are compared by value). Function options
 * are always the latest render's. `null`/`undefined` as `url` opens nothing.
 */
export function useLiveSet<T = LiveSetRecord>(
  url: string | URL | null | undefined,
  options?: LiveSetOptions<T>,
): LiveSetView<T>;
