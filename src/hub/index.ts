import fs from 'node:fs';
import path from 'node:path';
import { modelInfo } from '@huggingface/hub';
import { UserError } from '../util/errors.js';
import { COMMIT_RE, RepoCache, repoFolderName } from './cache.js';
import { ensureBlob, headFile, type FileMeta } from './download.js';
import { hubCacheDir, hubEndpoint, hubOffline, hubToken } from './env.js';
import { CONFIG, OPTIONAL_FILES, pickleOnlyError, shardsOf, SINGLE_WEIGHTS, weightsEntry, WEIGHTS_INDEX } from './files.js';
import { HubHttpError, HubUnreachableError, request, type HttpSettings } from './http.js';
import type { LockOptions } from './lock.js';
import { makeDownloadProgress, type DownloadProgress } from './progress.js';

export { hubCacheDir, hubEndpoint, hubOffline, hubToken } from './env.js';
export { repoFolderName } from './cache.js';

export interface ResolveOptions {
  /** branch, tag or commit; default: the `@revision` of the spec, else "main" */
  revision?: string;
  /** the cache root; default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub */
  cacheDir?: string;
  /** the Hub; default `$HF_ENDPOINT`, else https://huggingface.co */
  endpoint?: string;
  /** default `$HF_TOKEN`, else the token file `$HF_HOME/token` */
  token?: string;
  /** cache only, no network; default `$HF_HUB_OFFLINE` */
  offline?: boolean;
  /** progress on stderr (a byte bar per file on a TTY, a line per file otherwise); default true */
  progress?: boolean;
  /** where the progress goes (default process.stderr) */
  progressStream?: NodeJS.WritableStream;
  /** the fetch to use (default the global one) */
  fetch?: typeof fetch;
  /** tries after the first on a transient failure: network error, 5xx, 429, broken download (default 4) */
  retries?: number;
  /** the first backoff delay in ms, doubled on each retry (default 500) */
  retryDelayMs?: number;
  /** ms to wait for response headers, or for more bytes of a download, before a try fails (default 30 000) */
  timeoutMs?: number;
  /** the per-blob lock between processes (stale after 60 s untouched, polled every 100 ms) */
  lock?: LockOptions;
}

export interface ModelSpec {
  repo: string;
  revision: string;
}

const REPO_ID_RE = /^(?:[A-Za-z0-9][\w.-]*\/)?[A-Za-z0-9][\w.-]*$/;

/** `org/name`, `name`, `org/name@revision`; `revision` (if given) must agree with an `@revision`. */
export function parseModelSpec(spec: string, revision?: string): ModelSpec {
  const at = spec.indexOf('@');
  const repo = at < 0 ? spec : spec.slice(0, at);
  const specRevision = at < 0 ? undefined : spec.slice(at + 1);
  if (!REPO_ID_RE.test(repo) || repo.includes('--') || repo.includes('..') || repo.length > 96 || /\.git$/.test(repo)) {
    throw new UserError(`${spec}: no such file or directory, and not a Hub repository id (org/name or org/name@revision)`);
  }
  if (specRevision !== undefined && revision !== undefined && specRevision !== revision) {
    throw new UserError(`${spec}: revision given twice (@${specRevision} and ${revision})`);
  }
  const rev = specRevision ?? revision ?? 'main';
  if (rev === '' || rev.split('/').some((p) => p === '' || p === '.' || p === '..') || /[\\\0\s]/.test(rev)) {
    throw new UserError(`${spec}: invalid revision ${JSON.stringify(rev)}`);
  }
  return { repo, revision: rev };
}

/**
 * A model directory for `spec`: an existing local path is returned unchanged; a Hub repository id (`org/name`,
 * `name`, with `@revision` or `opts.revision`, default main) is resolved to its commit and the files a model needs
 * (config.json, the tokenizer files the repository has, model.safetensors or the shard index and its shards) are
 * downloaded into the huggingface_hub cache. Returns the snapshot folder
 * `<cache>/models--org--name/snapshots/<commit>`. Errors are UserErrors (one line).
 */
export async function resolveModel(spec: string, opts: ResolveOptions = {}): Promise<string> {
  if (fs.existsSync(spec)) return spec;
  const { repo, revision } = parseModelSpec(spec, opts.revision);
  const cache = new RepoCache(path.resolve(opts.cacheDir ?? hubCacheDir()), repo);
  if (opts.offline ?? hubOffline()) {
    return fromCache(cache, repo, revision, `${opts.offline ? 'offline' : 'HF_HUB_OFFLINE=1'}: nothing is downloaded`);
  }
  const s: HttpSettings = {
    endpoint: (opts.endpoint ?? hubEndpoint()).replace(/\/+$/, ''),
    token: opts.token ?? hubToken(),
    fetch: opts.fetch ?? globalThis.fetch,
    retries: opts.retries ?? 4,
    retryDelayMs: opts.retryDelayMs ?? 500,
    timeoutMs: opts.timeoutMs ?? 30_000,
  };
  const progress = makeDownloadProgress(opts.progress ?? true, repo, opts.progressStream);
  try {
    return await resolveOnline(s, cache, repo, revision, progress, opts.lock);
  } catch (err) {
    if (!(err instanceof HubUnreachableError)) throw err;
    const host = new URL(err.url).host;
    let cached: string | undefined;
    try {
      cached = fromCache(cache, repo, revision, '');
    } catch {
      cached = undefined;
    }
    if (cached !== undefined) {
      progress.note(`${repo}: ${host} unreachable (${err.reason}); using the cached snapshot ${path.basename(cached)}`);
      return cached;
    }
    throw new UserError(`${repo}: cannot download from ${host}: ${err.reason} (after ${err.tries} ${err.tries === 1 ? 'try' : 'tries'})`);
  }
}

/** A one-line message for an HTTP error status of the Hub, about `file` (or the repository when undefined). */
function hubErrorMessage(err: HubHttpError, s: HttpSettings, repo: string, revision: string, file?: string): string {
  const host = new URL(err.url).host;
  const detail = err.errorMessage ? ` (${err.errorMessage})` : '';
  if (err.status === 401 || err.status === 403) {
    const refused = s.token ? ' (the token sent was refused)' : '';
    const missing = err.errorCode === 'RepoNotFound' ? ' (or no such repository)' : '';
    return `${repo}: gated or private repository${missing}${refused}: set HF_TOKEN (a token with access to ${repo})`;
  }
  if (err.status === 404) {
    switch (err.errorCode) {
      case 'RepoNotFound':
        return `${repo}: no such repository on ${host}${detail}`;
      case 'RevisionNotFound':
        return `${repo}: no revision "${revision}" in the repository${detail}`;
      case 'EntryNotFound':
        return `${repo}@${revision}: no file ${file ?? '?'} in the repository${detail}`;
    }
    return `${repo}@${revision}: ${file ?? 'repository'} not found (HTTP 404 from ${host})${detail}`;
  }
  return `${repo}@${revision}: ${file ? `${file}: ` : ''}HTTP ${err.status} from ${host}${detail}`;
}

async function resolveOnline(
  s: HttpSettings,
  cache: RepoCache,
  repo: string,
  revision: string,
  progress: DownloadProgress,
  lock: LockOptions | undefined,
): Promise<string> {
  const about = async <T>(file: string | undefined, work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (err) {
      if (err instanceof HubHttpError) throw new UserError(hubErrorMessage(err, s, repo, revision, file));
      throw err;
    }
  };

  const listing = await about(undefined, () => listRevision(s, repo, revision));
  let commit: string | undefined = COMMIT_RE.test(revision) ? revision : listing?.sha;
  const metas = new Map<string, FileMeta>();
  const head = async (file: string): Promise<FileMeta> => {
    const meta = await headFile(s, repo, commit ?? revision, file);
    if (commit === undefined) commit = meta.commit;
    else if (meta.commit !== commit) {
      throw new UserError(`${repo}@${revision}: ${file}: the Hub answered commit ${meta.commit} for a request pinned to ${commit}`);
    }
    metas.set(file, meta);
    return meta;
  };
  /** Whether the repository has `file`: from the listing, else from a HEAD (404 EntryNotFound = no). */
  const has = (file: string): Promise<boolean> =>
    about(file, async () => {
      if (listing) return listing.files.has(file);
      if (commit !== undefined && cache.hasFile(commit, file)) return true;
      try {
        await head(file);
        return true;
      } catch (err) {
        if (err instanceof HubHttpError && err.status === 404 && err.errorCode === 'EntryNotFound') return false;
        throw err;
      }
    });

  if (!(await has(CONFIG))) throw new UserError(`${repo}@${revision}: no ${CONFIG} in the repository (not a transformers model?)`);
  if (commit === undefined) await about(CONFIG, () => head(CONFIG));
  const pinned = commit as string;
  cache.writeRef(revision, pinned);

  const optional: string[] = [];
  for (const f of OPTIONAL_FILES) if (await has(f)) optional.push(f);
  let weights: string;
  if (listing) weights = weightsEntry(repo, revision, (f) => listing.files.has(f), 'in the repository');
  else if (await has(SINGLE_WEIGHTS)) weights = SINGLE_WEIGHTS;
  else if (await has(WEIGHTS_INDEX)) weights = WEIGHTS_INDEX;
  else if (await has('pytorch_model.bin')) throw pickleOnlyError(repo, revision);
  else throw new UserError(`${repo}@${revision}: no ${SINGLE_WEIGHTS} or ${WEIGHTS_INDEX} in the repository`);

  const fetchFile = (file: string): Promise<void> =>
    about(file, async () => {
      if (cache.hasFile(pinned, file)) return;
      const meta = metas.get(file) ?? (await head(file));
      await ensureBlob(s, { repo, cache, meta, progress, lock });
      cache.linkSnapshotFile(pinned, file, meta.etag);
    });

  for (const f of [CONFIG, ...optional, weights]) await fetchFile(f);
  if (weights === WEIGHTS_INDEX) {
    const shards = shardsOf(repo, fs.readFileSync(cache.pointerPath(pinned, WEIGHTS_INDEX), 'utf8'));
    for (const shard of shards) {
      if (listing && !listing.files.has(shard)) {
        throw new UserError(`${repo}@${revision}: ${WEIGHTS_INDEX} lists ${shard}, which is not in the repository`);
      }
      await fetchFile(shard);
    }
  }
  return cache.snapshotDir(pinned);
}

/**
 * The revision's commit and files (the API's `sha` and `siblings`), from `GET /api/models/{repo}/revision/{revision}` through
 * @huggingface/hub's modelInfo. Its requests go through `request` (the token, HF_ENDPOINT, the injected fetch,
 * retries and the Hub's error headers): the token is added there rather than passed as `accessToken`, which the
 * library rejects unless it starts with "hf_". Undefined when the endpoint has no such API (a 404 without the Hub's
 * X-Error-Code, or an answer that is not the JSON expected): the files are then probed one by one with HEAD.
 */
async function listRevision(s: HttpSettings, repo: string, revision: string): Promise<{ sha?: string; files: Set<string> } | undefined> {
  const viaRequest = (async (input: string | URL | Request) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    return (await request(s, url, { headers: { accept: 'application/json' } })).res;
  }) as typeof fetch;
  let info: { sha?: unknown; filePaths?: unknown };
  try {
    info = await modelInfo({ name: repo, revision, hubUrl: s.endpoint, fetch: viaRequest, additionalFields: ['sha', 'filePaths'] });
  } catch (err) {
    if (err instanceof HubHttpError && ((err.status === 404 && !err.errorCode) || err.status === 405 || err.status === 501)) return undefined;
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
  if (!Array.isArray(info.filePaths)) return undefined;
  const files = new Set(info.filePaths.filter((f): f is string => typeof f === 'string'));
  const sha = typeof info.sha === 'string' && COMMIT_RE.test(info.sha) ? info.sha : undefined;
  return { sha, files };
}

/** The cached snapshot for `revision`, checked to hold config.json and the weights; else an error naming what is missing. */
function fromCache(cache: RepoCache, repo: string, revision: string, why: string): string {
  const tail = why ? `; ${why}` : '';
  const commit = COMMIT_RE.test(revision) ? revision : cache.readRef(revision);
  if (commit === undefined) {
    throw new UserError(`${repo}@${revision}: not in the cache ${cache.cacheDir} (no ${path.join(repoFolderName(repo), 'refs', revision)})${tail}`);
  }
  const snapshot = cache.snapshotDir(commit);
  const need = (file: string): void => {
    if (!cache.hasFile(commit, file)) {
      throw new UserError(`${repo}@${revision}: ${file} is not in the cache ${cache.cacheDir} (snapshot ${commit})${tail}`);
    }
  };
  need(CONFIG);
  const weights = weightsEntry(repo, revision, (f) => cache.hasFile(commit, f), `in the cache ${cache.cacheDir} (snapshot ${commit})${tail}`);
  if (weights === WEIGHTS_INDEX) {
    for (const shard of shardsOf(repo, fs.readFileSync(path.join(snapshot, WEIGHTS_INDEX), 'utf8'))) need(shard);
  }
  return snapshot;
}
