/**
 * Builds the demo page into dist-web/: web/app.ts bundled with esbuild for browsers (onnxruntime-web stays a
 * separate module, mapped by the page's import map to the copy in dist-web/ort/), the HTML and CSS, and
 * onnxruntime-web's WebAssembly files. Fails when the bundle pulls in anything of Node's.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
// the WebAssembly build for programs, the WebGPU build (fetched only where the browser has an adapter) for exported models
const ORT_FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm', 'ort.webgpu.min.mjs', 'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm'];

/** Source files that import a Node built-in (what a browser bundle must never contain). */
export function nodeOnlySources(): Set<string> {
  const out = new Set<string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts') && /^import (?!type )[^;]*from '(node:)?(fs|path|os|child_process|worker_threads|url|http|crypto)'/m.test(fs.readFileSync(p, 'utf8'))) {
        out.add(path.relative(repoRoot, p));
      }
    }
  };
  walk(path.join(repoRoot, 'src'));
  return out;
}

/** What in a bundle's inputs is Node's: built-in modules, onnxruntime-node, or ptune sources that import them. */
export function nodeInputs(metafile: esbuild.Metafile): string[] {
  const banned = nodeOnlySources();
  const importers = (p: string) => Object.entries(metafile.inputs).filter(([, v]) => v.imports.some((i) => i.path === p)).map(([from]) => from);
  return Object.keys(metafile.inputs).filter((p) =>
    p.startsWith('node:') || p.includes('onnxruntime-node') || banned.has(p) ||
    // protobufjs maps its optional fs use (loading .proto files) to an empty module for browsers; nothing else may
    (p.startsWith('(disabled)') && !importers(p).every((from) => from.startsWith('node_modules/protobufjs/'))),
  );
}

/** Bundles `entry` for browsers (onnxruntime-web external: the page maps it to its own files) and returns the metafile. */
export async function bundle(entry: string, outfile: string | null): Promise<{ metafile: esbuild.Metafile; bytes: number }> {
  const r = await esbuild.build({
    absWorkingDir: repoRoot,
    entryPoints: [entry],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    external: ['onnxruntime-web', 'onnxruntime-web/*'],
    metafile: true,
    sourcemap: outfile !== null,
    ...(outfile ? { outfile } : { write: false, outdir: 'dist-web/tmp' }),
    logLevel: 'warning',
  });
  const bytes = outfile ? fs.statSync(outfile).size : (r.outputFiles?.[0]?.contents.length ?? 0);
  const bad = nodeInputs(r.metafile);
  if (bad.length) throw new Error(`${entry}: the browser bundle pulls in Node-only code: ${bad.join(', ')}`);
  // a browser has no `process`: an unguarded process.env read fails when the module loads
  const text = outfile ? fs.readFileSync(outfile, 'utf8') : (r.outputFiles?.find((f) => f.path.endsWith('.js'))?.text ?? '');
  const line = text.split('\n').findIndex((l) => /(?<![.?\w])process\.env\b/.test(l));
  if (line >= 0) throw new Error(`${entry}: the browser bundle reads process.env (bundle line ${line + 1}: ${text.split('\n')[line]!.trim().slice(0, 120)})`);
  return { metafile: r.metafile, bytes };
}

export async function buildWeb(outDir = path.join(repoRoot, 'dist-web')): Promise<{ outDir: string; bytes: number }> {
  fs.rmSync(path.join(outDir, 'ort'), { recursive: true, force: true });
  fs.mkdirSync(path.join(outDir, 'ort'), { recursive: true });
  const { bytes } = await bundle('web/app.ts', path.join(outDir, 'app.js'));
  for (const f of ['index.html', 'style.css']) fs.copyFileSync(path.join(repoRoot, 'web', f), path.join(outDir, f));
  const ortDist = path.join(repoRoot, 'node_modules/onnxruntime-web/dist');
  for (const f of ORT_FILES) {
    const to = path.join(outDir, 'ort', f);
    const from = path.join(ortDist, f);
    fs.copyFileSync(from, to);
  }
  return { outDir, bytes };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const t0 = Date.now();
  const { outDir, bytes } = await buildWeb();
  console.log(`built ${path.relative(process.cwd(), outDir)}/ (app.js ${(bytes / 1e6).toFixed(2)} MB) in ${Date.now() - t0} ms`);
}
