// A typed use of @changestream/live-set: checked by `tsc --noEmit` in scripts/test
// (tests/browser/tsconfig.live-set.json), never run. Every option and member appears once.
import {
  liveSet,
  LiveSet,
  type LiveSetChange,
  type LiveSetError,
  type LiveSetOptions,
  type LiveSetResetInfo,
  type LiveSetStatus,
} from '@changestream/live-set';

interface Todo {
  id: number;
  title: string;
  done: boolean;
}

function render(todos: Todo[]): void {
  document.title = `${todos.filter((t) => !t.done).length} to do`;
}

const options: LiveSetOptions<Todo> = {
  snapshot: true,
  snapshotTimeout: 5_000,
  api: '/api',
  idName: 'id',
  maxBackoff: 10_000,
  token: async () => sessionStorage.getItem('jwt'),
  onChange(change: LiveSetChange<Todo>, set: LiveSet<Todo>) {
    switch (change.type) {
      case 'create':
      case 'update':
        // `data` is the whole record after the change.
        console.log(change.topic, change.id, change.target, change.data.title);
        break;
      case 'remove':
        console.log('removed', change.target, change.where);
        break;
      case 'load':
        console.log('loaded', change.topic);
        break;
    }
    render(set.records);
  },
  onReset(info: LiveSetResetInfo) {
    if (info.reason === 'history-trimmed') console.info('rebuilding from', info.resumeFrom);
  },
  onStatus(status: LiveSetStatus) {
    document.body.dataset.status = status;
  },
  onError(error: LiveSetError) {
    if (error.status === 400) console.error('bad filter:', error.message);
  },
};

const filter = encodeURIComponent(JSON.stringify({ where: { done: false } }));
const todos = liveSet<Todo>(`/api/Todos/change-stream?_format=event-stream&options=${filter}`, options);

async function main(): Promise<void> {
  const ready: LiveSet<Todo> = await todos.ready;
  const first: Todo | undefined = ready.get(0);
  const all: Todo[] = todos.records;
  const count: number = todos.size;
  const position: string = todos.lastEventId;
  const fromSnapshots: boolean = todos.snapshots;
  console.log(first?.title, all.length, count, position, fromSnapshots);
  await todos.reload();
  todos.close();
}
void main();

// The load path with a custom loader, a string token and no snapshots.
const loaded = new LiveSet<Todo>(new URL('/api/Todos/change-stream?_format=event-stream', location.href), {
  load: (topic) => fetch(`/api/${topic}`).then((r) => r.json() as Promise<Todo[]>),
  snapshot: false,
  token: 'eyJhbGciOiJIUzI1NiJ9.e30.signature',
});
loaded.close();

// Start empty (a topic fed by raw publishes); records untyped: JSON objects.
const raw = liveSet('/api/Metrics/change-stream?_format=event-stream', { load: false });
const value: unknown = raw.records[0]?.['value'];
console.log(value);

// Several topics on one stream: records and lookups per topic.
const both = liveSet<Todo>('/events?topic=Todos&topic=Archive');
both.get('a-string-id', 'Archive');

// A polyfill or a test double: the browser's EventSource, a subclass, or any constructor
// with the same shape.
class Counting extends EventSource {
  count = 0;
  constructor(url: string) {
    super(url);
    this.addEventListener('data', () => {
      this.count += 1;
    });
  }
}
liveSet('/api/Todos/change-stream', { EventSource: Counting }).close();
liveSet('/api/Todos/change-stream', { EventSource }).close();
