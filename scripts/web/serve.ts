/**
 * Serves the demo page on 127.0.0.1: dist-web/ (npm run demo:web builds it), the models of ../shared/models at
 * /models/NAME/, ../shared/data at /data/, exported runs at /exports/NAME/, and site.json listing them. Every
 * response is cross-origin isolated (COOP/COEP), so onnxruntime-web may use WebAssembly threads.
 *
 *   node dist/scripts/web/serve.js [--port 8137] [--export DIR ...] [--no-demo-export]
 *
 * Without --no-demo-export a small SST-2 run is trained and exported into runs/web-demo/ on the first start.
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { repoRoot } from './build.js';
import { shared, sst2Export } from './fixtures.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.json': 'application/json', '.jsonl': 'application/jsonl', '.wasm': 'application/wasm', '.map': 'application/json',
  '.txt': 'text/plain; charset=utf-8', '.png': 'image/png', '.svg': 'image/svg+xml',
};

export interface ServeOptions {
  port?: number;
  /** the built page (default dist-web/) */
  root?: string;
  /** exported runs to serve, by name */
  exports?: Record<string, string>;
  /** more folders to serve, by URL prefix (tests: bad files) */
  extra?: Record<string, string>;
}

export interface Server {
  url: string;
  close(): Promise<void>;
}

function isModelDir(dir: string): boolean {
  return ['config.json', 'tokenizer.json', 'model.safetensors'].every((f) => fs.existsSync(path.join(dir, f)));
}

export async function serveWeb(opts: ServeOptions = {}): Promise<Server> {
  const root = opts.root ?? path.join(repoRoot, 'dist-web');
  if (!fs.existsSync(path.join(root, 'app.js'))) throw new Error(`${root}: no app.js (build the page first: node dist/scripts/web/build.js)`);
  const modelsDir = path.join(shared, 'models');
  const models = fs.readdirSync(modelsDir).filter((m) => isModelDir(path.join(modelsDir, m))).sort();
  const lamaDir = path.join(shared, 'data/lama/fact-retrieval/original');
  const relations = fs.existsSync(lamaDir)
    ? fs.readdirSync(lamaDir).filter((r) => ['train.jsonl', 'dev.jsonl'].every((f) => fs.existsSync(path.join(lamaDir, r, f)))).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)))
    : [];
  const exports = opts.exports ?? {};
  const site = {
    models: models.map((name) => ({ name, url: `models/${name}` })),
    exports: Object.keys(exports).map((name) => ({ name, url: `exports/${name}` })),
    relations,
    lama: 'data/lama/fact-retrieval/original',
  };
  const mounts: [string, string][] = [
    ['models/', modelsDir],
    ['data/', path.join(shared, 'data')],
    ...Object.entries(exports).map(([name, dir]) => [`exports/${name}/`, dir] as [string, string]),
    ...Object.entries(opts.extra ?? {}).map(([prefix, dir]) => [prefix.replace(/^\/|\/?$/g, '') + '/', dir] as [string, string]),
  ];
  const server = http.createServer((req, res) => {
    const headers = {
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin',
      'Cache-Control': 'no-store',
    };
    const send = (status: number, body: string | Buffer, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { ...headers, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'GET only');
    let rel: string;
    try {
      rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, '');
    } catch {
      return send(400, 'bad path');
    }
    if (rel === '' ) rel = 'index.html';
    if (rel === 'site.json') return send(200, JSON.stringify(site), TYPES['.json']);
    let base = root;
    for (const [prefix, dir] of mounts) {
      if (rel.startsWith(prefix)) {
        base = dir;
        rel = rel.slice(prefix.length);
        break;
      }
    }
    const file = path.resolve(base, rel);
    if (file !== base && !file.startsWith(base + path.sep)) return send(403, 'outside the served folders');
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) return send(404, `${rel}: not found`);
      res.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'Content-Length': st.size });
      if (req.method === 'HEAD') return res.end();
      fs.createReadStream(file).pipe(res);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const address = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${address.port}/`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  let port = 8137;
  const exports: Record<string, string> = {};
  let demoExport = true;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--port') port = Number(args[++i]);
    else if (a === '--export') {
      const dir = path.resolve(args[++i] ?? '');
      if (!fs.existsSync(path.join(dir, 'ptune.json'))) throw new Error(`--export ${dir}: no ptune.json (make one with ptune export --format onnx)`);
      exports[path.basename(dir)] = dir;
    } else if (a === '--no-demo-export') demoExport = false;
    else throw new Error(`unknown option ${a} (--port N, --export DIR, --no-demo-export)`);
  }
  if (!Number.isInteger(port) || port < 0) throw new Error('--port: expected a port number');
  if (demoExport) exports['sst2-demo'] = await sst2Export(path.resolve('runs/web-demo'), { log: (l) => console.log(l) });
  const s = await serveWeb({ port, exports });
  console.log(`ptune demo page: ${s.url}  (Ctrl-C stops it)`);
}
