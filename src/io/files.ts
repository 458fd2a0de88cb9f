/**
 * Where a model's or an export's files come from, without a file system: a directory over HTTP (`fetchSource`),
 * files a user picked in a page (`blobSource`), or anything else that can hand over a file's bytes by name.
 * Node's directories are one more source (src/io/node-files.ts).
 */
export interface FileSource {
  /** names the source in messages (a URL, a folder, "the chosen files") */
  readonly name: string;
  /** The bytes of `file` (a path relative to the source, e.g. `model.safetensors`), or null when it is absent. */
  read(file: string): Promise<Uint8Array | null>;
}

/** `source`'s `file` as text, or null when absent. */
export async function readText(source: FileSource, file: string): Promise<string | null> {
  const bytes = await source.read(file);
  return bytes === null ? null : new TextDecoder().decode(bytes);
}

/** `source`'s `file` as JSON, or null when absent; invalid JSON is an error naming the file. */
export async function readJson(source: FileSource, file: string): Promise<unknown> {
  const text = await readText(source, file);
  if (text === null) return null;
  try {
    return JSON.parse(text.replace(/^\uFEFF/, ''));
  } catch (err) {
    throw new Error(`${where(source, file)}: invalid JSON (${(err as Error).message.split('\n')[0]})`);
  }
}

/** How messages name `file` of `source`. */
export function where(source: FileSource, file: string): string {
  return `${source.name.replace(/\/+$/, '')}/${file}`;
}

/**
 * Files under a base URL, fetched when read: 404 (and 410) mean absent; any other failure is an error naming
 * the URL. `fetchImpl` defaults to the global fetch.
 */
export function fetchSource(baseUrl: string, fetchImpl: typeof fetch = globalThis.fetch.bind(globalThis)): FileSource {
  const base = baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`;
  return {
    name: base.replace(/\/$/, ''),
    async read(file) {
      const url = base + file.split('/').map(encodeURIComponent).join('/');
      let res: Response;
      try {
        res = await fetchImpl(url);
      } catch (err) {
        throw new Error(`${url}: cannot be fetched (${(err as Error).message})`);
      }
      if (res.status === 404 || res.status === 410) return null;
      if (!res.ok) throw new Error(`${url}: HTTP ${res.status} ${res.statusText}`.trim());
      return new Uint8Array(await res.arrayBuffer());
    },
  };
}

/** Files held in memory or picked in a page (File / Blob objects), by name. */
export function blobSource(files: Iterable<[string, Blob | Uint8Array]> | Record<string, Blob | Uint8Array>, name = 'the chosen files'): FileSource {
  const byName = new Map(Symbol.iterator in Object(files) ? (files as Iterable<[string, Blob | Uint8Array]>) : Object.entries(files));
  return {
    name,
    async read(file) {
      const f = byName.get(file) ?? byName.get(file.split('/').pop()!);
      if (f === undefined) return null;
      return f instanceof Uint8Array ? f : new Uint8Array(await f.arrayBuffer());
    },
  };
}
