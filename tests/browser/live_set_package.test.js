// The npm package clients/live-set packs offline from the repository (no dependency to
// fetch) into a tarball with the module, the React entry point, their declarations and the
// README, and nothing else; its `exports` resolve, and the main entry never imports React.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { REPO, STEP_MS } from './harness.js';

const run = promisify(execFile);
const PACKAGE = path.join(REPO, 'clients/live-set');

test('npm pack of clients/live-set works offline and ships exactly the package files', async (t) => {
  const out = await mkdtemp(path.join(tmpdir(), 'live-set-pack-'));
  t.after(() => rm(out, { recursive: true, force: true }));
  const { stdout } = await run('npm', ['pack', '--offline', '--json', '--pack-destination', out], {
    cwd: PACKAGE,
    timeout: STEP_MS * 4,
  });
  const [report] = JSON.parse(stdout);
  const manifest = JSON.parse(await readFile(path.join(PACKAGE, 'package.json'), 'utf8'));
  assert.equal(report.name, manifest.name);
  assert.equal(report.version, manifest.version);

  // What is in the tarball itself, not what npm says it put there.
  const { stdout: listing } = await run('tar', ['-tzf', path.join(out, report.filename)], { timeout: STEP_MS });
  const files = listing.split('\n').filter(Boolean).sort();
  assert.deepEqual(files, [
    'package/README.md',
    'package/live-set.d.ts',
    'package/live-set.js',
    'package/package.json',
    'package/react.d.ts',
    'package/react.js',
  ]);
  // The packed module is the file the gateway serves (one source).
  const { stdout: packed } = await run('tar', ['-xzOf', path.join(out, report.filename), 'package/live-set.js'], {
    timeout: STEP_MS,
    maxBuffer: 4 << 20,
  });
  assert.equal(packed, await readFile(path.join(PACKAGE, 'live-set.js'), 'utf8'));
});

test('the package manifest: ESM, exports with types, no runtime dependencies, react optional', async () => {
  const manifest = JSON.parse(await readFile(path.join(PACKAGE, 'package.json'), 'utf8'));
  assert.equal(manifest.type, 'module');
  assert.equal(manifest.license, 'Apache-2.0'); // the workspace's (Cargo.toml)
  assert.deepEqual(manifest.exports['.'], { types: './live-set.d.ts', default: './live-set.js' });
  assert.deepEqual(manifest.exports['./react'], { types: './react.d.ts', default: './react.js' });
  assert.equal(manifest.types, './live-set.d.ts');
  assert.equal(manifest.dependencies, undefined);
  assert.deepEqual(manifest.peerDependenciesMeta, { react: { optional: true } });

  // The main entry imports nothing (it is served to browsers as is); only react.js imports React.
  const main = await readFile(path.join(PACKAGE, 'live-set.js'), 'utf8');
  assert.doesNotMatch(main, /^\s*import\s/m);
  const hook = await readFile(path.join(PACKAGE, 'react.js'), 'utf8');
  assert.deepEqual([...hook.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]), ['react', './live-set.js']);

  // The module loads outside a browser too (server-side rendering imports it): it touches
  // no browser global until a set is opened.
  const { liveSet, LiveSet } = await import(path.join(PACKAGE, 'live-set.js'));
  assert.equal(typeof liveSet, 'function');
  assert.equal(typeof LiveSet, 'function');
});
