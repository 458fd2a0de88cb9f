import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import { parseModelSpec, resolveModel, type ResolveOptions } from '../src/hub/index.js';
import { UserError } from '../src/util/errors.js';
import { gitBlobId, HubServer, sha256 } from './hub-server.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ptune-hub-'));
for (const v of ['HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_TOKEN_PATH', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_ENDPOINT', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE']) {
  delete process.env[v];
}
process.env.HF_HOME = path.join(tmp, 'home');

let server: HubServer;
let caches = 0;
const freshCache = (): string => path.join(tmp, `cache-${caches++}`);
const opts = (cacheDir: string, extra: ResolveOptions = {}): ResolveOptions => ({
  cacheDir,
  endpoint: server.endpoint,
  progress: false,
  retryDelayMs: 2,
  ...extra,
});

const CONFIG = JSON.stringify({ model_type: 'bert', hidden_size: 8 });
const weights = (n: number): Buffer => randomBytes(n);
let tinyV1 = '';
let tinyV2 = '';

before(async () => {
  server = await HubServer.start();
  server.createRepo('org/tiny');
  tinyV1 = server.commit(
    'org/tiny',
    {
      'config.json': CONFIG,
      'tokenizer.json': JSON.stringify({ model: { type: 'WordPiece' } }),
      'tokenizer_config.json': '{}',
      'vocab.txt': '[PAD]\n[UNK]\n',
      'model.safetensors': weights(200_000),
      'pytorch_model.bin': weights(1000),
      'README.md': '# tiny\n',
    },
    { tags: ['v1'] },
  );
  tinyV2 = server.commit('org/tiny', { 'config.json': JSON.stringify({ model_type: 'bert', hidden_size: 16 }), 'model.safetensors': weights(200_000) });

  server.createRepo('org/sharded');
  const index = { metadata: {}, weight_map: { a: 'shards/model-00001-of-00002.safetensors', b: 'shards/model-00002-of-00002.safetensors', c: 'shards/model-00001-of-00002.safetensors' } };
  server.commit('org/sharded', {
    'config.json': CONFIG,
    'model.safetensors.index.json': JSON.stringify(index),
    'shards/model-00001-of-00002.safetensors': weights(30_000),
    'shards/model-00002-of-00002.safetensors': weights(20_000),
  });
  server.createRepo('org/pickle');
  server.commit('org/pickle', { 'config.json': CONFIG, 'pytorch_model.bin': weights(1000) });
  server.createRepo('org/gated', { token: 'hf_good' });
  server.commit('org/gated', { 'config.json': CONFIG, 'model.safetensors': weights(10_000) });
  server.createRepo('solo');
  server.commit('solo', { 'config.json': CONFIG, 'model.safetensors': weights(5_000) });
  server.createRepo('org/big');
  server.commit('org/big', { 'config.json': CONFIG, 'model.safetensors': weights(2_000_000) });
  server.createRepo('org/broken');
  server.commit('org/broken', { 'config.json': CONFIG, 'model.safetensors.index.json': JSON.stringify({ weight_map: { a: 'gone.safetensors' } }) });
});

after(async () => {
  await server.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const repoDir = (cache: string, folder: string): string => path.join(cache, folder);

/** Every entry under `dir`, recursively, as paths relative to it. */
function walk(dir: string, prefix = ''): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    return e.isDirectory() ? [rel, ...walk(path.join(dir, e.name), rel)] : [rel];
  });
}

async function rejectsWith(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error) => {
    assert.ok(err instanceof UserError, `not a UserError: ${err.stack}`);
    assert.match(err.message, pattern);
    assert.equal(err.message.includes('\n'), false, err.message);
    return true;
  });
}

test('a model downloads into an empty cache in the huggingface_hub layout', async () => {
  const cache = freshCache();
  const dir = await resolveModel('org/tiny', opts(cache));
  const repo = repoDir(cache, 'models--org--tiny');
  assert.equal(dir, path.join(repo, 'snapshots', tinyV2));
  assert.deepEqual(fs.readdirSync(dir).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt']);
  assert.equal(fs.readFileSync(path.join(repo, 'refs', 'main'), 'utf8'), tinyV2);
  for (const f of fs.readdirSync(dir)) {
    const content = server.content('org/tiny', f);
    const etag = f === 'model.safetensors' ? sha256(content) : gitBlobId(content);
    assert.equal(fs.readlinkSync(path.join(dir, f)), `../../blobs/${etag}`, f);
    assert.deepEqual(fs.readFileSync(path.join(dir, f)), content, f);
  }
  assert.deepEqual(walk(path.join(repo, 'blobs')).filter((f) => /\.(incomplete|lock)$/.test(f)), []);
  // the LFS bytes came from the other origin, and the pickle and README were never asked for
  assert.equal(server.contentGets('model.safetensors').at(-1)?.origin, 'lfs');
  assert.equal(server.requests.some((r) => r.path.includes('pytorch_model.bin') || r.path.includes('README.md')), false);
});

test('a second resolve reuses the cache: no HEAD and no GET of a file', async () => {
  const cache = freshCache();
  const first = await resolveModel('org/tiny', opts(cache));
  const seen = server.requests.length;
  assert.equal(await resolveModel('org/tiny', opts(cache)), first);
  const later = server.requests.slice(seen);
  assert.deepEqual(later.map((r) => `${r.method} ${r.path}`), ['GET /api/models/org/tiny/revision/main']);
});

test('offline mode works from the cache and names what is missing', async () => {
  const cache = freshCache();
  const dir = await resolveModel('org/tiny', opts(cache));
  const seen = server.requests.length;
  assert.equal(await resolveModel('org/tiny', opts(cache, { offline: true })), dir);
  process.env.HF_HUB_OFFLINE = '1';
  try {
    assert.equal(await resolveModel('org/tiny', opts(cache)), dir);
    await rejectsWith(resolveModel('org/sharded', opts(cache)), /org\/sharded@main: not in the cache .*cache-\d+ .*refs.*HF_HUB_OFFLINE=1/);
    fs.rmSync(path.join(dir, 'model.safetensors'));
    await rejectsWith(
      resolveModel('org/tiny', opts(cache)),
      new RegExp(`org/tiny@main: no model\\.safetensors or model\\.safetensors\\.index\\.json in the cache ${cache} \\(snapshot ${tinyV2}\\); HF_HUB_OFFLINE=1`),
    );
    fs.rmSync(path.join(dir, 'config.json'));
    await rejectsWith(resolveModel(`org/tiny@${tinyV2}`, opts(cache)), new RegExp(`config\\.json is not in the cache ${cache}`));
  } finally {
    delete process.env.HF_HUB_OFFLINE;
  }
  assert.equal(server.requests.length, seen, 'offline made requests');
});

test('a pinned revision: a commit or a tag gets its own snapshot; blobs shared between commits are not fetched again', async () => {
  const cache = freshCache();
  await resolveModel('org/tiny', opts(cache));
  const tokGets = server.contentGets('tokenizer.json').length;
  const byCommit = await resolveModel(`org/tiny@${tinyV1}`, opts(cache));
  const repo = repoDir(cache, 'models--org--tiny');
  assert.equal(byCommit, path.join(repo, 'snapshots', tinyV1));
  assert.equal(fs.readFileSync(path.join(byCommit, 'config.json'), 'utf8'), CONFIG);
  assert.equal(server.contentGets('tokenizer.json').length, tokGets, 'an unchanged file was downloaded again');
  assert.deepEqual(fs.readdirSync(path.join(repo, 'refs')), ['main']);
  assert.equal(await resolveModel('org/tiny', opts(cache, { revision: 'v1' })), byCommit);
  assert.equal(fs.readFileSync(path.join(repo, 'refs', 'v1'), 'utf8'), tinyV1);
  assert.equal(await resolveModel('org/tiny@v1', opts(cache, { offline: true })), byCommit);
  await rejectsWith(resolveModel('org/tiny@v1', opts(cache, { revision: 'main' })), /revision given twice/);
});

test('a gated repository: a clear error without a token or with a wrong one; the token never leaves the Hub', async () => {
  const cache = freshCache();
  const message = /^org\/gated: gated or private repository: set HF_TOKEN \(a token with access to org\/gated\)$/;
  await rejectsWith(resolveModel('org/gated', opts(cache)), message);
  await rejectsWith(resolveModel('org/gated', opts(cache, { token: 'hf_wrong' })), /org\/gated: gated or private repository \(the token sent was refused\): set HF_TOKEN/);
  const seen = server.requests.length;
  const dir = await resolveModel('org/gated', opts(cache, { token: 'hf_good' }));
  assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), server.content('org/gated', 'model.safetensors'));
  const made = server.requests.slice(seen);
  assert.ok(made.filter((r) => r.origin === 'hub').every((r) => r.headers.authorization === 'Bearer hf_good'));
  const lfs = made.filter((r) => r.origin === 'lfs');
  assert.equal(lfs.length, 1);
  assert.equal(lfs[0].headers.authorization, undefined, 'Authorization sent to another origin');

  // the token file under HF_HOME, as huggingface_hub writes it
  const tokenFile = path.join(process.env.HF_HOME!, 'token');
  fs.mkdirSync(path.dirname(tokenFile), { recursive: true });
  fs.writeFileSync(tokenFile, 'hf_good\n');
  try {
    const viaFile = await resolveModel('org/gated', opts(freshCache()));
    assert.deepEqual(fs.readFileSync(path.join(viaFile, 'model.safetensors')), server.content('org/gated', 'model.safetensors'));
  } finally {
    fs.rmSync(tokenFile);
  }
});

test('an interrupted download is resumed with a Range request, and the sha256 covers the resumed prefix', async () => {
  const cache = freshCache();
  server.dropAfter('model.safetensors', 65_536);
  const before = server.contentGets('model.safetensors').length;
  const dir = await resolveModel('org/big', opts(cache));
  const gets = server.contentGets('model.safetensors').slice(before);
  assert.equal(gets.length, 2);
  assert.equal(gets[0].headers.range, undefined);
  assert.equal(gets[1].headers.range, 'bytes=65536-');
  const content = server.content('org/big', 'model.safetensors');
  assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), content);
  assert.equal(fs.readlinkSync(path.join(dir, 'model.safetensors')), `../../blobs/${sha256(content)}`);
});

test('a download broken for good keeps blobs/<etag>.incomplete, and the next resolve continues it', async () => {
  const cache = freshCache();
  const content = server.content('org/big', 'model.safetensors');
  const blobs = path.join(repoDir(cache, 'models--org--big'), 'blobs');
  // a try that got more bytes is free; then the LFS host fails with nothing left to retry
  server.dropAfter('model.safetensors', 100_000);
  server.fail('/lfs/', 500, 1, 1);
  await rejectsWith(resolveModel('org/big', opts(cache, { retries: 0 })), /^org\/big: cannot download from 127\.0\.0\.1:\d+: HTTP 500 \(injected failure\) \(after 2 tries\)$/);
  assert.equal(fs.statSync(path.join(blobs, `${sha256(content)}.incomplete`)).size, 100_000);
  assert.equal(fs.existsSync(path.join(blobs, `${sha256(content)}.lock`)), false);
  const snapshots = path.join(repoDir(cache, 'models--org--big'), 'snapshots');
  assert.deepEqual(walk(snapshots).filter((f) => f.endsWith('model.safetensors')), []);
  const before = server.contentGets('model.safetensors').length;
  const dir = await resolveModel('org/big', opts(cache, { retries: 0 }));
  const gets = server.contentGets('model.safetensors').slice(before);
  assert.deepEqual(gets.map((g) => g.headers.range), ['bytes=100000-']);
  assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), content);
  assert.deepEqual(fs.readdirSync(blobs).filter((f) => !/^[0-9a-f]+$/.test(f)), []);
});

test('a server that ignores Range restarts the file; a kept partial file that is wrong is downloaded again', async () => {
  const content = server.content('org/big', 'model.safetensors');
  const plant = (cache: string, bytes: Buffer): void => {
    const blobs = path.join(repoDir(cache, 'models--org--big'), 'blobs');
    fs.mkdirSync(blobs, { recursive: true });
    fs.writeFileSync(path.join(blobs, `${sha256(content)}.incomplete`), bytes);
  };
  let cache = freshCache();
  plant(cache, content.subarray(0, 1000));
  server.ignoreRange = true;
  try {
    const before = server.contentGets('model.safetensors').length;
    const dir = await resolveModel('org/big', opts(cache));
    assert.deepEqual(server.contentGets('model.safetensors').slice(before).map((g) => g.headers.range), ['bytes=1000-']);
    assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), content);
  } finally {
    server.ignoreRange = false;
  }
  cache = freshCache();
  plant(cache, randomBytes(1000));
  const before = server.contentGets('model.safetensors').length;
  const dir = await resolveModel('org/big', opts(cache));
  assert.deepEqual(server.contentGets('model.safetensors').slice(before).map((g) => g.headers.range), ['bytes=1000-', undefined]);
  assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), content);
});

test('corrupted bytes are detected (sha256 for LFS files, the git blob id for small ones) and nothing is cached', async () => {
  for (const file of ['model.safetensors', 'config.json']) {
    const cache = freshCache();
    server.corrupt(file);
    await rejectsWith(
      resolveModel('org/tiny', opts(cache)),
      new RegExp(`^org/tiny: ${file.replace('.', '\\.')}: corrupted download \\((sha256|git blob id) [0-9a-f]+, expected [0-9a-f]+\\): not cached, try again$`),
    );
    const repo = repoDir(cache, 'models--org--tiny');
    const content = server.content('org/tiny', file);
    const etag = file === 'config.json' ? gitBlobId(content) : sha256(content);
    assert.deepEqual(walk(path.join(repo, 'blobs')).filter((f) => f.startsWith(etag)), [], `bad data left for ${file}`);
    assert.deepEqual(walk(path.join(repo, 'snapshots')).filter((f) => f.endsWith(file)), []);
  }
});

test('two processes resolving the same model into one cache at once both succeed, with one download', async () => {
  const cache = freshCache();
  const moduleUrl = new URL('../src/hub/index.js', import.meta.url).href;
  const code = `const { resolveModel } = await import(${JSON.stringify(moduleUrl)});
    const dir = await resolveModel('org/big', { cacheDir: process.env.CACHE, endpoint: process.env.ENDPOINT, retryDelayMs: 5, lock: { pollMs: 20 } });
    process.stdout.write(dir);`;
  const run = (): Promise<{ code: number | null; out: string; err: string }> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
        env: { ...process.env, CACHE: cache, ENDPOINT: server.endpoint },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      child.on('close', (c) => resolve({ code: c, out, err }));
    });
  server.throttle = { bytes: 65_536, ms: 4 };
  const before = server.contentGets('model.safetensors').length;
  let results;
  try {
    results = await Promise.all([run(), run()]);
  } finally {
    server.throttle = undefined;
  }
  for (const r of results) assert.equal(r.code, 0, r.err);
  assert.equal(results[0].out, results[1].out);
  assert.deepEqual(fs.readFileSync(path.join(results[0].out, 'model.safetensors')), server.content('org/big', 'model.safetensors'));
  assert.equal(server.contentGets('model.safetensors').length - before, 1, 'the blob was downloaded twice');
  const blobs = path.join(repoDir(cache, 'models--org--big'), 'blobs');
  assert.deepEqual(fs.readdirSync(blobs).filter((f) => !/^[0-9a-f]+$/.test(f)), []);
});

test('a stale lock (a dead owner, or untouched for too long) is broken', async () => {
  const content = server.content('org/gated', 'model.safetensors');
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  for (const lock of [
    { text: JSON.stringify({ host: os.hostname(), pid: dead, nonce: 'x' }), age: 0 },
    { text: JSON.stringify({ host: 'elsewhere', pid: 1, nonce: 'y' }), age: 5_000 },
  ]) {
    const cache = freshCache();
    const blobs = path.join(repoDir(cache, 'models--org--gated'), 'blobs');
    fs.mkdirSync(blobs, { recursive: true });
    const file = path.join(blobs, `${sha256(content)}.lock`);
    fs.writeFileSync(file, lock.text);
    const t = new Date(Date.now() - lock.age);
    fs.utimesSync(file, t, t);
    const dir = await resolveModel('org/gated', opts(cache, { token: 'hf_good', lock: { staleMs: 1_000, pollMs: 10 } }));
    assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), content);
    assert.equal(fs.existsSync(file), false);
  }
});

test('a repository with only pytorch_model.bin is refused before anything is downloaded', async () => {
  const cache = freshCache();
  await rejectsWith(
    resolveModel('org/pickle', opts(cache)),
    /^org\/pickle@main: only pytorch_model\.bin weights .*ptune never loads pickles: .*org\/pickle@refs\/pr\/N.*save_pretrained\(dir, safe_serialization=True\)/,
  );
  assert.deepEqual(walk(path.join(repoDir(cache, 'models--org--pickle'), 'blobs')), []);
});

test('404s say whether the repository, the revision or the file is missing', async () => {
  const cache = freshCache();
  await rejectsWith(resolveModel('org/nope', opts(cache)), /^org\/nope: no such repository on 127\.0\.0\.1:\d+ \(Repository not found\)$/);
  await rejectsWith(resolveModel('org/tiny@nobranch', opts(cache)), /^org\/tiny: no revision "nobranch" in the repository \(Invalid rev id: nobranch\)$/);
  await rejectsWith(resolveModel('org/broken', opts(cache)), /^org\/broken@main: model\.safetensors\.index\.json lists gone\.safetensors, which is not in the repository$/);
  server.noApi = true;
  try {
    await rejectsWith(resolveModel('org/broken', opts(cache)), /^org\/broken@main: no file gone\.safetensors in the repository \(gone\.safetensors does not exist on "[0-9a-f]{40}"\)$/);
  } finally {
    server.noApi = false;
  }
});

test('without the revision API the files are probed with HEAD, into the same layout', async () => {
  const cache = freshCache();
  server.noApi = true;
  try {
    const dir = await resolveModel('org/tiny', opts(cache));
    assert.equal(dir, path.join(repoDir(cache, 'models--org--tiny'), 'snapshots', tinyV2));
    assert.deepEqual(fs.readdirSync(dir).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'vocab.txt']);
    await rejectsWith(resolveModel('org/pickle', opts(cache)), /only pytorch_model\.bin weights/);
  } finally {
    server.noApi = false;
  }
});

test('5xx and 429 are retried with backoff; a Hub that stays down or cannot be reached is a clear error', async () => {
  let cache = freshCache();
  server.fail('/api/models/solo', 500, 2);
  server.fail('/solo/resolve/', 429, 1);
  server.fail('/lfs/', 503, 1);
  const seen = { api: server.count('GET', '/api/models/solo'), head: server.count('HEAD', '/solo/resolve/'), lfs: server.count('GET', '/lfs/') };
  const dir = await resolveModel('solo', opts(cache));
  assert.equal(server.count('GET', '/api/models/solo') - seen.api, 3);
  assert.equal(server.count('HEAD', '/solo/resolve/') - seen.head, 3); // config.json twice, model.safetensors
  assert.equal(server.count('GET', '/lfs/') - seen.lfs, 2);
  assert.equal(dir, path.join(repoDir(cache, 'models--solo'), 'snapshots', path.basename(dir)));
  assert.deepEqual(fs.readdirSync(dir).sort(), ['config.json', 'model.safetensors']);

  cache = freshCache();
  server.fail('/api/models/org/tiny', 502, 100);
  try {
    await rejectsWith(resolveModel('org/tiny', opts(cache, { retries: 2 })), /^org\/tiny: cannot download from 127\.0\.0\.1:\d+: HTTP 502 \(injected failure\) \(after 3 tries\)$/);
  } finally {
    server.clearFailures();
  }
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  await rejectsWith(
    resolveModel('org/tiny', { ...opts(cache, { retries: 1 }), endpoint: `http://127.0.0.1:${port}` }),
    new RegExp(`^org/tiny: cannot download from 127\\.0\\.0\\.1:${port}: ECONNREFUSED.* \\(after 2 tries\\)$`),
  );
});

test('an unreachable Hub falls back to a complete cached snapshot', async () => {
  const cache = freshCache();
  const dir = await resolveModel('org/tiny', opts(cache));
  const closed = http.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((r) => closed.close(r));
  const lines: string[] = [];
  const stream = new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) });
  assert.equal(await resolveModel('org/tiny', { ...opts(cache, { retries: 0, progress: true, progressStream: stream }), endpoint: `http://127.0.0.1:${port}` }), dir);
  assert.match(lines.join(''), /org\/tiny: 127\.0\.0\.1:\d+ unreachable \(ECONNREFUSED.*\); using the cached snapshot [0-9a-f]{40}\n/);
});

test('sharded weights: the index and every shard it lists, nested paths with the right number of ../', async () => {
  const cache = freshCache();
  const dir = await resolveModel('org/sharded', opts(cache));
  assert.deepEqual(walk(dir).sort(), [
    'config.json',
    'model.safetensors.index.json',
    'shards',
    'shards/model-00001-of-00002.safetensors',
    'shards/model-00002-of-00002.safetensors',
  ]);
  for (const f of ['shards/model-00001-of-00002.safetensors', 'shards/model-00002-of-00002.safetensors']) {
    const content = server.content('org/sharded', f);
    assert.equal(fs.readlinkSync(path.join(dir, f)), `../../../blobs/${sha256(content)}`);
    assert.deepEqual(fs.readFileSync(path.join(dir, f)), content);
  }
  assert.equal(await resolveModel('org/sharded', opts(cache, { offline: true })), dir);
  fs.rmSync(path.join(dir, 'shards/model-00002-of-00002.safetensors'));
  await rejectsWith(resolveModel('org/sharded', opts(cache, { offline: true })), /shards\/model-00002-of-00002\.safetensors is not in the cache/);
});

test('a relative LFS redirect is followed on the Hub itself, with the token', async () => {
  const local = await HubServer.start({ lfsRedirect: 'relative' });
  try {
    local.createRepo('org/gated', { token: 'hf_good' });
    local.commit('org/gated', { 'config.json': CONFIG, 'model.safetensors': weights(3000) });
    const dir = await resolveModel('org/gated', { ...opts(freshCache(), { token: 'hf_good' }), endpoint: local.endpoint });
    assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), local.content('org/gated', 'model.safetensors'));
    const lfs = local.requests.filter((r) => r.path.startsWith('/lfs/'));
    assert.equal(lfs.length, 1);
    assert.equal(lfs[0].origin, 'hub');
  } finally {
    await local.close();
  }
});

test('progress: a line per downloaded file, a byte bar on a TTY, nothing when off', async () => {
  const capture = (tty: boolean): { stream: Writable; text: () => string } => {
    const chunks: string[] = [];
    const stream = new Writable({ write: (c, _e, cb) => (chunks.push(String(c)), cb()) });
    Object.assign(stream, { isTTY: tty, columns: 120 });
    return { stream, text: () => chunks.join('') };
  };
  const lines = capture(false);
  await resolveModel('org/sharded', opts(freshCache(), { progress: true, progressStream: lines.stream }));
  const out = lines.text().trim().split('\n');
  assert.equal(out.length, 4, lines.text());
  assert.match(out[0], /^org\/sharded: config\.json \d+ B in \d+\.\d s$/);
  assert.match(out[3], /^org\/sharded: shards\/model-00002-of-00002\.safetensors 20\.0 kB in \d+\.\d s$/);
  const bar = capture(true);
  await resolveModel('org/sharded', opts(freshCache(), { progress: true, progressStream: bar.stream }));
  assert.match(bar.text(), /org\/sharded shards\/model-00001-of-00002\.safetensors \[[^\]]+\] 30\.0 kB\/30\.0 kB/);
});

test('spec parsing: a local path is returned as it is; a repository id, with or without an org', async () => {
  assert.equal(await resolveModel(tmp), tmp);
  assert.deepEqual(parseModelSpec('org/name'), { repo: 'org/name', revision: 'main' });
  assert.deepEqual(parseModelSpec('name@v1'), { repo: 'name', revision: 'v1' });
  assert.deepEqual(parseModelSpec('org/name@refs/pr/3'), { repo: 'org/name', revision: 'refs/pr/3' });
  assert.deepEqual(parseModelSpec('org/name', 'dev'), { repo: 'org/name', revision: 'dev' });
  for (const bad of ['./missing/dir', '/abs/missing', 'a/b/c', 'org/na--me', 'org/name@', 'org/name@../x']) {
    assert.throws(() => parseModelSpec(bad), UserError, bad);
  }
  const cache = freshCache();
  const dir = await resolveModel('solo', opts(cache));
  assert.equal(path.dirname(path.dirname(dir)), path.join(cache, 'models--solo'));
});
