/**
 * A lock file per blob (`blobs/<etag>.lock`), so that two processes downloading the same model do not write the
 * same `.incomplete` file: the lock of src/util/lock.ts, waited for. A lock is stale, and is broken, when its owner
 * is a dead process on this host, or when it has not been touched for `staleMs` (an owner on another host, or a
 * hung one).
 *
 * The lock only avoids double work: a blob only ever appears by an atomic rename of a verified file, so the
 * cache stays correct even if two owners ever overlapped.
 */
export { withLock, type LockOptions } from '../util/lock.js';
