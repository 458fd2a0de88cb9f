/**
 * A loopback Hugging Face Hub for the tests (node:http on 127.0.0.1, ephemeral ports): in-memory model repositories
 * with commits, branches and tags, served with the Hub's protocol:
 *
 *   GET  /api/models/{repo}/revision/{rev}   {id, sha, siblings: [{rfilename}], ...}
 *   GET  /api/models/{repo}/tree/{rev}       [{type, oid, size, path, lfs?}] (what huggingface_hub's snapshot_download lists)
 *   HEAD|GET /{repo}/resolve/{rev}/{file}    small files: 200, ETag = git blob id; LFS files: 302 to the LFS host,
 *                                            X-Linked-Etag = sha256, X-Linked-Size; both with X-Repo-Commit
 *   HEAD|GET /lfs/{sha256}                   the LFS bytes, with Range requests (on a second origin, or on the Hub)
 *
 * Errors carry X-Error-Code / X-Error-Message (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo); gated
 * repositories answer 401 without a bearer token and 403 with a wrong one. Failures can be injected (a connection
 * dropped after N bytes, corrupted bytes, an error status), every request is recorded, and bodies can be throttled.
 *
 * `node dist/test/hub-server.js --serve DIR` serves each DIR/org/name folder as a repository (one commit on main)
 * and prints {"endpoint": ...} on stdout; it stops on SIGTERM or when stdin closes.
 */
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';

export type FileInput = string | Uint8Array | { content: string | Uint8Array; lfs?: boolean };

interface StoredFile {
  content: Buffer;
  lfs: boolean;
  sha256: string;
  gitOid: string;
}

interface Repo {
  id: string;
  commits: Map<string, Map<string, StoredFile>>;
  refs: Map<string, string>;
  token?: string;
}

export interface RequestRecord {
  method: string;
  /** the decoded path, without the query */
  path: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** which listener answered */
  origin: 'hub' | 'lfs';
}

export interface HubServerOptions {
  /** where LFS resolve requests redirect: 'cdn' (absolute, to the second listener: another origin) or 'relative' (/lfs/ on the Hub) */
  lfsRedirect?: 'cdn' | 'relative';
  /** the host name written in the LFS URLs (default 127.0.0.1; `--serve` uses localhost, another host for huggingface_hub) */
  lfsHostname?: string;
}

const LFS_EXT = /\.(safetensors|bin|model|pt|pth|h5|msgpack|onnx|gguf)$/;

export function gitBlobId(content: Buffer): string {
  return createHash('sha1').update(`blob ${content.length}\0`).update(content).digest('hex');
}

export function sha256(content: Uint8Array): string {
  return createHash('sha256').update(content).digest('hex');
}

function lfsPointer(f: StoredFile): Buffer {
  return Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${f.sha256}\nsize ${f.content.length}\n`);
}

export class HubServer {
  /** the Hub's base URL, e.g. http://127.0.0.1:PORT */
  endpoint = '';
  /** the LFS host's origin */
  lfsOrigin = '';
  readonly requests: RequestRecord[] = [];
  /** API answers 404 without X-Error-Code (a mirror without the API) */
  noApi = false;
  /** Range requests get the whole file with 200 */
  ignoreRange = false;
  /** bodies are sent in chunks of `bytes` every `ms` */
  throttle: { bytes: number; ms: number } | undefined;
  private readonly repos = new Map<string, Repo>();
  private readonly blobs = new Map<string, Buffer>();
  private readonly drops = new Map<string, { after: number; times: number }>();
  private readonly corruptions = new Map<string, number>();
  private readonly failures: { fragment: string; status: number; times: number; skip: number }[] = [];
  private readonly hub: http.Server;
  private readonly lfs: http.Server;
  private counter = 0;

  private constructor(private readonly opts: HubServerOptions) {
    this.hub = http.createServer((req, res) => this.handle(req, res, 'hub'));
    this.lfs = http.createServer((req, res) => this.handle(req, res, 'lfs'));
  }

  static async start(opts: HubServerOptions = {}, port = 0): Promise<HubServer> {
    const s = new HubServer(opts);
    const listen = (srv: http.Server, p: number): Promise<number> =>
      new Promise((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(p, '127.0.0.1', () => resolve((srv.address() as AddressInfo).port));
      });
    const hubPort = await listen(s.hub, port);
    const lfsPort = await listen(s.lfs, 0);
    s.endpoint = `http://127.0.0.1:${hubPort}`;
    s.lfsOrigin = `http://${opts.lfsHostname ?? '127.0.0.1'}:${lfsPort}`;
    return s;
  }

  async close(): Promise<void> {
    const stop = (srv: http.Server): Promise<void> =>
      new Promise((resolve) => {
        srv.close(() => resolve());
        srv.closeAllConnections();
      });
    await Promise.all([stop(this.hub), stop(this.lfs)]);
  }

  /** A repository with no commit yet; `token`: gated, only this bearer token gets in. */
  createRepo(id: string, opts: { token?: string } = {}): void {
    this.repos.set(id, { id, commits: new Map(), refs: new Map(), token: opts.token });
  }

  /**
   * A new commit on `branch` (default main; created from the branch's head, or empty): `files` are added or replaced,
   * a null removes one. LFS: by extension (.safetensors, .bin, ...) unless `{content, lfs}` says. Returns the commit.
   */
  commit(id: string, files: Record<string, FileInput | null>, opts: { branch?: string; tags?: string[] } = {}): string {
    const repo = this.repos.get(id);
    if (!repo) throw new Error(`no repo ${id}`);
    const branch = opts.branch ?? 'main';
    const parent = repo.refs.get(branch);
    const tree = new Map(parent ? repo.commits.get(parent) : []);
    for (const [name, input] of Object.entries(files)) {
      if (input === null) {
        tree.delete(name);
        continue;
      }
      const raw = typeof input === 'string' || input instanceof Uint8Array ? input : input.content;
      const content = Buffer.from(typeof raw === 'string' ? Buffer.from(raw) : raw);
      const lfs = typeof input === 'object' && !(input instanceof Uint8Array) && input.lfs !== undefined ? input.lfs : LFS_EXT.test(name);
      const f: StoredFile = { content, lfs, sha256: sha256(content), gitOid: gitBlobId(content) };
      if (lfs) this.blobs.set(f.sha256, content);
      tree.set(name, f);
    }
    const sha = createHash('sha1').update(`${id}\n${parent ?? ''}\n${++this.counter}\n${randomBytes(8).toString('hex')}`).digest('hex');
    repo.commits.set(sha, tree);
    repo.refs.set(branch, sha);
    for (const t of opts.tags ?? []) repo.refs.set(t, sha);
    return sha;
  }

  /** The bytes of `file` at `rev`, as stored. */
  content(id: string, file: string, rev = 'main'): Buffer {
    const repo = this.repos.get(id)!;
    return repo.commits.get(repo.refs.get(rev) ?? rev)!.get(file)!.content;
  }

  /** The next `times` downloads of `file` (its bytes, any repo) close the connection after `after` bytes. */
  dropAfter(file: string, after: number, times = 1): void {
    this.drops.set(file, { after, times });
  }

  /** The next `times` downloads of `file` send one byte changed. */
  corrupt(file: string, times = 1): void {
    this.corruptions.set(file, times);
  }

  /** The next `times` requests whose path contains `fragment`, after `skip` more of them, are answered `status`. */
  fail(fragment: string, status = 500, times = 1, skip = 0): void {
    this.failures.push({ fragment, status, times, skip });
  }

  clearFailures(): void {
    this.failures.length = 0;
  }

  /** Requests with this method whose path contains `fragment`. */
  count(method: string, fragment: string): number {
    return this.requests.filter((r) => r.method === method && r.path.includes(fragment)).length;
  }

  /** The GETs that carried the bytes of `file` (the resolve GET of a small file, the LFS GET of a large one). */
  contentGets(file: string): RequestRecord[] {
    return this.requests.filter((r) => {
      if (r.method !== 'GET') return false;
      if (r.path.startsWith('/lfs/')) return new URL(r.url, 'http://loopback').searchParams.get('file') === file;
      return this.isResolveOf(r, file);
    });
  }

  private isResolveOf(r: RequestRecord, file: string): boolean {
    const parsed = parseResolve(r.path);
    return parsed !== undefined && parsed.file === file && !this.isLfs(parsed);
  }

  private isLfs(p: { repo: string; rev: string; file: string }): boolean {
    const repo = this.repos.get(p.repo);
    const sha = repo && (repo.refs.get(p.rev) ?? p.rev);
    return Boolean(sha && repo!.commits.get(sha)?.get(p.file)?.lfs);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse, origin: 'hub' | 'lfs'): void {
    const url = new URL(req.url ?? '/', 'http://loopback');
    const p = decodeURIComponent(url.pathname);
    this.requests.push({ method: req.method ?? 'GET', path: p, url: req.url ?? '/', headers: req.headers, origin });
    req.resume();
    const failure = this.failures.find((f) => f.times > 0 && p.includes(f.fragment));
    if (failure && failure.skip > 0) failure.skip--;
    else if (failure) {
      failure.times--;
      return this.error(res, failure.status, undefined, 'injected failure');
    }
    if (p.startsWith('/lfs/') && (origin === 'lfs' || this.opts.lfsRedirect === 'relative')) {
      const content = this.blobs.get(p.slice('/lfs/'.length));
      if (!content) return this.error(res, 404, undefined, 'no such object');
      return this.serveBytes(req, res, content, url.searchParams.get('file') ?? '', { etag: `"${sha256(content)}"` });
    }
    if (origin === 'lfs') return this.error(res, 404, undefined, 'not found');
    if (p.startsWith('/api/models/')) return this.api(req, res, p.slice('/api/models/'.length));
    const resolve = parseResolve(p);
    if (resolve) return this.resolve(req, res, resolve);
    this.error(res, 404, undefined, 'not found');
  }

  private error(res: http.ServerResponse, status: number, code: string | undefined, message: string, extra: Record<string, string> = {}): void {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...extra, 'x-error-message': message };
    if (code) headers['x-error-code'] = code;
    res.writeHead(status, headers);
    res.end(JSON.stringify({ error: message }));
  }

  /** The repository and commit of a request, or the error answer (not found, gated). */
  private lookup(req: http.IncomingMessage, res: http.ServerResponse, id: string, rev: string): { repo: Repo; sha: string } | undefined {
    const repo = this.repos.get(id);
    if (!repo) {
      this.error(res, 404, 'RepoNotFound', 'Repository not found');
      return undefined;
    }
    if (repo.token !== undefined) {
      const auth = req.headers.authorization;
      if (!auth) {
        this.error(res, 401, 'GatedRepo', `Access to model ${id} is restricted. You must be authenticated to access it.`);
        return undefined;
      }
      if (auth !== `Bearer ${repo.token}`) {
        this.error(res, 403, 'GatedRepo', `Access to model ${id} is restricted and you are not in the authorized list.`);
        return undefined;
      }
    }
    const sha = repo.refs.get(rev) ?? (repo.commits.has(rev) ? rev : undefined);
    if (!sha) {
      this.error(res, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
      return undefined;
    }
    return { repo, sha };
  }

  private api(req: http.IncomingMessage, res: http.ServerResponse, rest: string): void {
    if (this.noApi) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('Not Found');
      return;
    }
    const parts = rest.split('/');
    const at = parts.findIndex((x, i) => i > 0 && i <= 2 && (x === 'revision' || x === 'tree'));
    if (at < 0) return this.error(res, 404, undefined, 'not found');
    const id = parts.slice(0, at).join('/');
    const rev = parts.slice(at + 1).join('/') || 'main';
    const found = this.lookup(req, res, id, rev);
    if (!found) return;
    const tree = found.repo.commits.get(found.sha)!;
    let body: unknown;
    if (parts[at] === 'revision') {
      body = {
        _id: createHash('sha1').update(id).digest('hex').slice(0, 24),
        id,
        modelId: id,
        sha: found.sha,
        private: false,
        gated: found.repo.token !== undefined ? 'manual' : false,
        downloads: 0,
        likes: 0,
        tags: [],
        lastModified: new Date(0).toISOString(),
        siblings: [...tree.keys()].sort().map((rfilename) => ({ rfilename })),
      };
    } else {
      const dirs = new Set<string>();
      for (const name of tree.keys()) {
        const segs = name.split('/');
        for (let i = 1; i < segs.length; i++) dirs.add(segs.slice(0, i).join('/'));
      }
      body = [
        ...[...dirs].sort().map((d) => ({ type: 'directory', oid: createHash('sha1').update(d).digest('hex'), size: 0, path: d })),
        ...[...tree.entries()].sort().map(([name, f]) => ({
          type: 'file',
          oid: f.lfs ? gitBlobId(lfsPointer(f)) : f.gitOid,
          size: f.content.length,
          path: name,
          ...(f.lfs ? { lfs: { oid: f.sha256, size: f.content.length, pointerSize: lfsPointer(f).length } } : {}),
        })),
      ];
    }
    const text = JSON.stringify(body);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    res.end(req.method === 'HEAD' ? undefined : text);
  }

  private resolve(req: http.IncomingMessage, res: http.ServerResponse, r: { repo: string; rev: string; file: string }): void {
    const found = this.lookup(req, res, r.repo, r.rev);
    if (!found) return;
    const f = found.repo.commits.get(found.sha)!.get(r.file);
    if (!f) return this.error(res, 404, 'EntryNotFound', `${r.file} does not exist on "${r.rev}"`, { 'x-repo-commit': found.sha });
    const common = { 'x-repo-commit': found.sha };
    if (f.lfs) {
      const query = `?repo=${encodeURIComponent(r.repo)}&file=${encodeURIComponent(r.file)}`;
      const target = `${this.opts.lfsRedirect === 'relative' ? '' : this.lfsOrigin}/lfs/${f.sha256}${query}`;
      res.writeHead(302, {
        ...common,
        location: target,
        'x-linked-etag': `"${f.sha256}"`,
        'x-linked-size': String(f.content.length),
        etag: `"${gitBlobId(lfsPointer(f))}"`,
        'content-length': '0',
      });
      res.end();
      return;
    }
    this.serveBytes(req, res, f.content, r.file, { ...common, etag: `"${f.gitOid}"` });
  }

  /** A file's bytes: Range (bytes=N- and bytes=N-M), then the injected drop / corruption, then the throttle. */
  private serveBytes(req: http.IncomingMessage, res: http.ServerResponse, content: Buffer, file: string, headers: Record<string, string>): void {
    const size = content.length;
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    const out: Record<string, string> = { ...headers, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
    if (range && !this.ignoreRange) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(range);
      if (!m || Number(m[1]) >= size) {
        res.writeHead(416, { ...out, 'content-range': `bytes */${size}` });
        res.end();
        return;
      }
      start = Number(m[1]);
      end = m[2] ? Math.min(size - 1, Number(m[2])) : size - 1;
      status = 206;
      out['content-range'] = `bytes ${start}-${end}/${size}`;
    }
    let body = content.subarray(start, end + 1);
    out['content-length'] = String(body.length);
    res.writeHead(status, out);
    if (req.method === 'HEAD') return void res.end();
    const corrupt = this.corruptions.get(file);
    if (corrupt && body.length > 0) {
      this.corruptions.set(file, corrupt - 1);
      body = Buffer.from(body);
      body[body.length >> 1] ^= 0xff;
    }
    const drop = this.drops.get(file);
    let limit = body.length;
    if (drop && drop.times > 0) {
      drop.times--;
      limit = Math.min(drop.after, body.length);
    }
    const step = this.throttle?.bytes ?? body.length;
    const send = (at: number): void => {
      if (at >= limit) {
        if (limit < body.length) res.socket?.destroy();
        else res.end();
        return;
      }
      const chunk = body.subarray(at, Math.min(limit, at + Math.max(1, step)));
      res.write(chunk, () => {
        if (this.throttle) setTimeout(() => send(at + chunk.length), this.throttle.ms);
        else send(at + chunk.length);
      });
    };
    send(0);
  }
}

function parseResolve(p: string): { repo: string; rev: string; file: string } | undefined {
  const parts = p.split('/').slice(1);
  const at = parts.findIndex((x, i) => i > 0 && i <= 2 && x === 'resolve');
  if (at < 0 || parts.length < at + 3) return undefined;
  return { repo: parts.slice(0, at).join('/'), rev: parts[at + 1], file: parts.slice(at + 2).join('/') };
}

/** Files under `dir` (recursively), as repository paths. */
function listFiles(dir: string, prefix = ''): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    return e.isDirectory() ? listFiles(path.join(dir, e.name), rel) : [rel];
  });
}

async function serve(dir: string): Promise<void> {
  const server = await HubServer.start({ lfsHostname: 'localhost' });
  for (const org of fs.readdirSync(dir)) {
    for (const name of fs.readdirSync(path.join(dir, org))) {
      const id = `${org}/${name}`;
      const root = path.join(dir, org, name);
      server.createRepo(id);
      server.commit(id, Object.fromEntries(listFiles(root).map((f) => [f, fs.readFileSync(path.join(root, f))])));
    }
  }
  process.stdout.write(JSON.stringify({ endpoint: server.endpoint, lfs: server.lfsOrigin }) + '\n');
  const stop = (): void => void server.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
}

const serveAt = process.argv.indexOf('--serve');
if (serveAt >= 0 && process.argv[serveAt + 1]) void serve(process.argv[serveAt + 1]);
