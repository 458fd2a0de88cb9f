import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';

/**
 * The huggingface_hub cache layout, for model repositories:
 *
 *   <cache>/models--<org>--<name>/
 *     refs/<revision>               the commit a branch or tag resolved to (no trailing newline)
 *     blobs/<etag>                  file contents, named by the LFS sha256 or the git blob id
 *     snapshots/<commit>/<file>     relative symlink to ../../blobs/<etag> (one more ../ per folder in <file>)
 */

export const COMMIT_RE = /^[0-9a-f]{40}$/;

/** `models--org--name` for `org/name`, `models--name` for `name`. */
export function repoFolderName(repo: string): string {
  return ['models', ...repo.split('/')].join('--');
}

export class RepoCache {
  readonly dir: string;
  constructor(
    readonly cacheDir: string,
    readonly repo: string,
  ) {
    this.dir = path.join(cacheDir, repoFolderName(repo));
  }

  blobPath(etag: string): string {
    return path.join(this.dir, 'blobs', etag);
  }

  snapshotDir(commit: string): string {
    return path.join(this.dir, 'snapshots', commit);
  }

  pointerPath(commit: string, file: string): string {
    return path.join(this.snapshotDir(commit), ...file.split('/'));
  }

  /** The commit `refs/<revision>` names, if that ref is cached and well formed. */
  readRef(revision: string): string | undefined {
    try {
      const commit = fs.readFileSync(path.join(this.dir, 'refs', ...revision.split('/')), 'utf8').trim();
      return COMMIT_RE.test(commit) ? commit : undefined;
    } catch {
      return undefined;
    }
  }

  /** Records that `revision` (a branch or tag, not a commit) is `commit`; written atomically, only when it changes. */
  writeRef(revision: string, commit: string): void {
    if (revision === commit) return;
    const file = path.join(this.dir, 'refs', ...revision.split('/'));
    if (this.readRef(revision) === commit) return;
    writeFileAtomic(file, commit);
  }

  /** Whether snapshots/<commit>/<file> resolves to an existing regular file (a symlink to a present blob). */
  hasFile(commit: string, file: string): boolean {
    try {
      return fs.statSync(this.pointerPath(commit, file)).isFile();
    } catch {
      return false;
    }
  }

  /**
   * Points snapshots/<commit>/<file> at blobs/<etag> with a relative symlink. Another process may create the same
   * link at the same time: an existing link to the same blob is kept, anything else is replaced atomically.
   */
  linkSnapshotFile(commit: string, file: string, etag: string): void {
    const pointer = this.pointerPath(commit, file);
    const target = path.relative(path.dirname(pointer), this.blobPath(etag));
    fs.mkdirSync(path.dirname(pointer), { recursive: true });
    try {
      fs.symlinkSync(target, pointer);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    try {
      if (fs.readlinkSync(pointer) === target) return;
    } catch {
      // a regular file (a copy made where symlinks are unsupported) or gone again: replace it below
    }
    const tmp = `${pointer}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    fs.symlinkSync(target, tmp);
    try {
      fs.renameSync(tmp, pointer);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  }
}

/** Rejects repository file names that would leave the snapshot folder (absolute, `..`, backslashes, empty parts). */
export function isSafeRepoPath(file: string): boolean {
  if (file === '' || file.startsWith('/') || file.includes('\\') || file.includes('\0')) return false;
  return file.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}
