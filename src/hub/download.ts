import fs from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import { UserError } from '../util/errors.js';
import type { RepoCache } from './cache.js';
import { getFollowing, HubHttpError, requestOnce, retrying, TransientError, type HttpSettings } from './http.js';
import { withLock, type LockOptions } from './lock.js';
import type { DownloadProgress } from './progress.js';

/** What the Hub's resolve endpoint says about one file of one revision. */
export interface FileMeta {
  file: string;
  /** the revision's commit (X-Repo-Commit) */
  commit: string;
  /** the blob name: the LFS sha256 (X-Linked-Etag), or the git blob id (ETag), without quotes and W/ */
  etag: string;
  size?: number;
  /** where the bytes are: the resolve URL, or the LFS redirect's target */
  location: string;
}

export function resolveUrl(endpoint: string, repo: string, revision: string, file: string): string {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${file.split('/').map(encodeURIComponent).join('/')}`;
}

export function normalizeEtag(etag: string): string {
  return etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

const SHA256_RE = /^[0-9a-f]{64}$/;
const GIT_OID_RE = /^[0-9a-f]{40}$/;

function intHeader(res: Response, name: string): number | undefined {
  const v = res.headers.get(name);
  if (v === null || !/^\d+$/.test(v.trim())) return undefined;
  return Number(v);
}

/**
 * HEAD on the resolve URL, redirects not followed by fetch: a redirect that carries the Hub's headers (X-Repo-Commit
 * and an ETag: an LFS file whose bytes live elsewhere) gives the metadata and the download location; one without
 * them (a renamed repository) is followed with another HEAD.
 *
 * Written here rather than taken from @huggingface/hub: its fileDownloadInfo lets fetch follow the LFS redirect, so
 * the Hub's own answer (X-Repo-Commit, the redirect target) is lost and the commit is not returned; and its
 * downloadFileToCacheDir names the snapshot after the file's last commit instead of the revision's commit, does
 * not resume a broken download (it leaves blobs/<sha>.incomplete behind) and does not verify the sha256.
 */
export async function headFile(s: HttpSettings, repo: string, revision: string, file: string): Promise<FileMeta> {
  const first = resolveUrl(s.endpoint, repo, revision, file);
  return retrying(s, first, async () => {
    let url = first;
    for (let hop = 0; hop <= 5; hop++) {
      const { res } = await requestOnce(s, url, { method: 'HEAD' });
      await res.body?.cancel().catch(() => {});
      const commit = res.headers.get('x-repo-commit')?.trim();
      const etagHeader = res.headers.get('x-linked-etag') ?? res.headers.get('etag');
      const location = res.headers.get('location');
      const redirect = res.status >= 300 && res.status < 400;
      if (redirect && location && !(commit && etagHeader)) {
        url = new URL(location, url).href;
        continue;
      }
      if (!commit) {
        throw new UserError(`${repo}: ${file}: no X-Repo-Commit header from ${new URL(url).host} (is ${s.endpoint} a Hugging Face Hub endpoint? see HF_ENDPOINT)`);
      }
      if (!etagHeader) throw new UserError(`${repo}: ${file}: no ETag from ${new URL(url).host}: cannot name the cached blob`);
      const size = intHeader(res, 'x-linked-size') ?? (redirect ? undefined : intHeader(res, 'content-length'));
      return { file, commit, etag: normalizeEtag(etagHeader), size, location: redirect && location ? new URL(location, url).href : url };
    }
    throw new HubHttpError(310, first, undefined, 'too many redirects');
  });
}

export interface BlobDownload {
  repo: string;
  cache: RepoCache;
  meta: FileMeta;
  progress: DownloadProgress;
  lock?: LockOptions;
}

/**
 * Makes blobs/<etag> present: under the blob's lock, downloads into blobs/<etag>.incomplete, resuming what is there
 * (Range: bytes=N-), checks size and hash, and renames it into place. Returns whether this call downloaded it.
 */
export async function ensureBlob(s: HttpSettings, d: BlobDownload): Promise<boolean> {
  const blob = d.cache.blobPath(d.meta.etag);
  const present = (): boolean => fs.existsSync(blob);
  if (present()) return false;
  fs.mkdirSync(d.cache.blobPath(''), { recursive: true });
  const done = await withLock(
    `${blob}.lock`,
    present,
    async () => {
      if (present()) return false;
      await download(s, d, blob);
      return true;
    },
    { ...d.lock, onWait: () => d.progress.note(`${d.repo}: ${d.meta.file}: waiting for another download of it to finish`) },
  );
  return done ?? false;
}

/** The hash a blob name promises: sha256 of the bytes for an LFS file, the git blob id (sha1) for a small one. */
function expectedDigest(etag: string): 'sha256' | 'git' | undefined {
  if (SHA256_RE.test(etag)) return 'sha256';
  if (GIT_OID_RE.test(etag)) return 'git';
  return undefined;
}

async function hashFile(file: string, hash: Hash): Promise<void> {
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
}

function gitBlobId(file: string): string {
  const data = fs.readFileSync(file);
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

async function download(s: HttpSettings, d: BlobDownload, blob: string, fresh = false): Promise<void> {
  const { meta, progress } = d;
  const incomplete = `${blob}.incomplete`;
  if (fresh) fs.rmSync(incomplete, { force: true });
  const resumedFrom = fs.existsSync(incomplete) ? fs.statSync(incomplete).size : 0;
  const digest = expectedDigest(meta.etag);
  // the sha256 of the bytes in `incomplete`, kept in step with its length across tries
  let hash: Hash | undefined;
  let hashed = -1;
  let gotBytes = false;
  const t0 = Date.now();
  let started = false;

  const attempt = async (): Promise<void> => {
    gotBytes = false;
    let offset = fs.existsSync(incomplete) ? fs.statSync(incomplete).size : 0;
    if (meta.size !== undefined && offset > meta.size) {
      fs.truncateSync(incomplete, 0);
      offset = 0;
    }
    if (digest === 'sha256' && hashed !== offset) {
      hash = createHash('sha256');
      if (offset > 0) await hashFile(incomplete, hash);
      hashed = offset;
    }
    if (!started) {
      progress.start(meta.file, offset, meta.size);
      started = true;
    }
    if (meta.size === undefined || offset < meta.size) {
      let got: Awaited<ReturnType<typeof getFollowing>>;
      try {
        got = await getFollowing(s, meta.location, offset > 0 ? { range: `bytes=${offset}-` } : {});
      } catch (err) {
        if (!(err instanceof HubHttpError && err.status === 416 && offset > 0)) throw err;
        // the range is past the end (the partial file is not a prefix of this one): start over
        fs.truncateSync(incomplete, 0);
        offset = 0;
        got = await getFollowing(s, meta.location);
      }
      const { res, abort } = got;
      let start = offset;
      if (offset > 0 && res.status === 206) {
        const m = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '');
        if (!m || Number(m[1]) !== offset) {
          await res.body?.cancel().catch(() => {});
          fs.truncateSync(incomplete, 0);
          throw new TransientError(`unexpected Content-Range ${res.headers.get('content-range')} for bytes=${offset}-`);
        }
      } else if (res.status === 200) {
        start = 0; // no range asked, or the server ignored it: the whole file follows
      } else {
        await res.body?.cancel().catch(() => {});
        throw new HubHttpError(res.status, meta.location, undefined, 'unexpected status for a download');
      }
      if (start === 0 && digest === 'sha256') {
        hash = createHash('sha256');
        hashed = 0;
      }
      await receive(s, res, abort, incomplete, start, (chunk, total) => {
        hash?.update(chunk);
        hashed = total;
        gotBytes = true;
        progress.update(total);
      });
    }
    const size = fs.statSync(incomplete).size;
    if (meta.size !== undefined && size < meta.size) throw new TransientError(`connection closed after ${size} of ${meta.size} bytes`);
    if (meta.size !== undefined && size > meta.size) {
      fs.rmSync(incomplete, { force: true });
      throw new UserError(`${d.repo}: ${meta.file}: got ${size} bytes, the Hub announced ${meta.size}: not cached`);
    }
  };

  try {
    await retrying(s, meta.location, attempt, () => gotBytes);
  } catch (err) {
    progress.abort();
    throw err;
  }
  const got = digest === 'sha256' ? hash!.digest('hex') : digest === 'git' ? gitBlobId(incomplete) : undefined;
  if (got !== undefined && got !== meta.etag) {
    fs.rmSync(incomplete, { force: true });
    progress.abort();
    if (resumedFrom > 0 && !fresh) {
      // the kept partial file may be what was wrong: one more try from scratch
      progress.note(`${d.repo}: ${meta.file}: the resumed download does not match its hash; downloading it again`);
      return download(s, d, blob, true);
    }
    const kind = digest === 'sha256' ? 'sha256' : 'git blob id';
    throw new UserError(`${d.repo}: ${meta.file}: corrupted download (${kind} ${got}, expected ${meta.etag}): not cached, try again`);
  }
  fs.renameSync(incomplete, blob);
  progress.finish(meta.file, fs.statSync(blob).size, Date.now() - t0);
}

/** Streams a response body into `file` from byte `start` (truncating there), with a stall timeout. */
async function receive(
  s: HttpSettings,
  res: Response,
  abort: (reason?: unknown) => void,
  file: string,
  start: number,
  onChunk: (chunk: Uint8Array, total: number) => void,
): Promise<void> {
  if (!res.body) throw new TransientError('empty response body');
  const fh = await fs.promises.open(file, start === 0 ? 'w' : 'r+');
  let total = start;
  let stalled = false;
  let timer = setTimeout(() => ((stalled = true), abort()), s.timeoutMs);
  try {
    await fh.truncate(start);
    for await (const chunk of res.body) {
      clearTimeout(timer);
      timer = setTimeout(() => ((stalled = true), abort()), s.timeoutMs);
      const bytes = chunk as Uint8Array;
      await fh.write(bytes, 0, bytes.length, total);
      total += bytes.length;
      onChunk(bytes, total);
    }
  } catch (err) {
    if (stalled) throw new TransientError(`no data for ${s.timeoutMs / 1000} s after ${total} bytes`);
    const e = err as { message?: string; cause?: { code?: string; message?: string } };
    throw new TransientError(`download broke after ${total} bytes (${e.cause?.code ?? e.cause?.message ?? e.message})`);
  } finally {
    clearTimeout(timer);
    await fh.close();
  }
}
