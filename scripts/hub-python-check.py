#!/usr/bin/env python3
"""Checks that ptune's Hub cache and Python's huggingface_hub cache are one and the same.

Starts the loopback Hub of the tests (node dist/test/hub-server.js --serve DIR) on 127.0.0.1 with two small
models, then:
  (a) ptune downloads them into a fresh cache; huggingface_hub finds every file there with local_files_only=True
      (snapshot_download, hf_hub_download, try_to_load_from_cache, scan_cache_dir) and, online, downloads nothing;
  (b) huggingface_hub (HF_ENDPOINT = the loopback Hub) downloads them into another fresh cache; ptune resolves
      them with HF_HUB_OFFLINE=1, and online without downloading anything;
  (c) huggingface_hub downloads one file, ptune completes the model, huggingface_hub finds it all offline.

Needs `npx tsc -p .` first and a Python with huggingface_hub:
  python3 -m venv /tmp/hubvenv && /tmp/hubvenv/bin/pip install huggingface_hub
  /tmp/hubvenv/bin/python scripts/hub-python-check.py
Exits 0 when every check passes. Nothing leaves this machine: the Hub is a local process.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "dist", "test", "hub-server.js")
HUB_MODULE = os.path.join(ROOT, "dist", "src", "hub", "index.js")

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok or not detail else ': ' + detail}", flush=True)


def safetensors(tensors):
    """A minimal valid safetensors file: float32 tensors {name: (shape, values)}."""
    header, data = {}, b""
    for name, (shape, values) in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write_models(root):
    """Two repositories: org/tiny-bert (one model.safetensors) and org/tiny-sharded (an index and two shards)."""
    config = json.dumps({"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1}).encode()
    files = {
        "org/tiny-bert": {
            "config.json": config,
            "tokenizer.json": json.dumps({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}).encode(),
            "tokenizer_config.json": b"{}",
            "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n",
            "model.safetensors": safetensors({"w": ([64, 64], [i * 0.5 for i in range(4096)])}),
            "README.md": b"# tiny-bert\n",
        },
        "org/tiny-sharded": {
            "config.json": config,
            "model.safetensors.index.json": json.dumps(
                {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            ).encode(),
            "model-00001-of-00002.safetensors": safetensors({"a": ([32, 32], [1.0] * 1024)}),
            "model-00002-of-00002.safetensors": safetensors({"b": ([16], [2.0] * 16)}),
        },
    }
    for repo, content in files.items():
        for name, data in content.items():
            path = os.path.join(root, repo, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    return files


def ptune_resolve(spec, env_extra):
    """resolveModel(spec) in a node process; the cache, endpoint and offline mode come from the environment."""
    code = (
        "const { resolveModel } = await import(process.env.PTUNE_HUB_MODULE);"
        "try { const dir = await resolveModel(process.env.PTUNE_SPEC, { progress: false });"
        " process.stdout.write(JSON.stringify({ dir })); }"
        "catch (e) { process.stdout.write(JSON.stringify({ error: e.message })); }"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"PTUNE_HUB_MODULE": "file://" + HUB_MODULE, "PTUNE_SPEC": spec, "HF_HOME": os.environ["HF_HOME"]})
    env.update(env_extra)
    out = subprocess.run(["node", "--input-type=module", "-e", code], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout)


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def blob_state(cache):
    """{blob path: (inode, mtime)} for every blob in the cache: unchanged means nothing was downloaded again."""
    state = {}
    for dirpath, _, names in os.walk(cache):
        if os.path.basename(dirpath) == "blobs":
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                state[os.path.join(dirpath, n)] = (st.st_ino, st.st_mtime_ns)
    return state


def main():
    if not (os.path.exists(SERVER) and os.path.exists(HUB_MODULE)):
        sys.exit("build first: npx tsc -p .")
    work = tempfile.mkdtemp(prefix="ptune-hub-python-")
    server = None
    try:
        files = write_models(os.path.join(work, "repos"))
        os.environ["HF_HOME"] = os.path.join(work, "home")  # no token, no cache of the user's
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        for k in ["HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE"]:
            os.environ.pop(k, None)
        server = subprocess.Popen(
            ["node", SERVER, "--serve", os.path.join(work, "repos")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        endpoint = json.loads(server.stdout.readline())["endpoint"]
        os.environ["HF_ENDPOINT"] = endpoint  # read by huggingface_hub when it is imported, below
        import huggingface_hub
        from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download, try_to_load_from_cache

        print(f"huggingface_hub {huggingface_hub.__version__}, loopback Hub at {endpoint}", flush=True)
        source = lambda repo, f: hashlib.sha256(files[repo][f]).hexdigest()  # noqa: E731
        needed = {
            "org/tiny-bert": ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"],
            "org/tiny-sharded": [
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
            ],
        }

        # (a) ptune downloads, huggingface_hub finds
        cache_a = os.path.join(work, "cache-ptune")
        for repo, names in needed.items():
            got = ptune_resolve(repo, {"HF_HUB_CACHE": cache_a, "HF_ENDPOINT": endpoint})
            if "error" in got:
                check(f"(a) ptune downloads {repo}", False, got["error"])
                continue
            d = got["dir"]
            check(f"(a) ptune downloads {repo}", sorted(os.listdir(d)) == names, str(sorted(os.listdir(d))))
            try:
                py = snapshot_download(repo, cache_dir=cache_a, local_files_only=True)
                check(f"(a) snapshot_download(local_files_only) finds ptune's snapshot of {repo}", os.path.samefile(py, d), py)
            except Exception as e:  # noqa: BLE001
                check(f"(a) snapshot_download(local_files_only) finds ptune's snapshot of {repo}", False, repr(e))
            for f in names:
                try:
                    p = hf_hub_download(repo, f, cache_dir=cache_a, local_files_only=True)
                    ok = p == os.path.join(d, f) and sha256_file(p) == source(repo, f)
                    check(f"(a) hf_hub_download(local_files_only) {repo} {f}", ok, p)
                except Exception as e:  # noqa: BLE001
                    check(f"(a) hf_hub_download(local_files_only) {repo} {f}", False, repr(e))
            p = try_to_load_from_cache(repo, "config.json", cache_dir=cache_a)
            check(f"(a) try_to_load_from_cache {repo} config.json", p == os.path.join(d, "config.json"), str(p))
            before = blob_state(cache_a)
            py = snapshot_download(repo, cache_dir=cache_a, allow_patterns=names)
            check(f"(a) huggingface_hub online reuses ptune's blobs of {repo}", os.path.samefile(py, d) and blob_state(cache_a) == before)
        info = scan_cache_dir(cache_a)
        ok = (
            not info.warnings
            and sorted(r.repo_id for r in info.repos) == sorted(needed)
            and all(len(r.revisions) == 1 and next(iter(r.revisions)).refs == frozenset({"main"}) for r in info.repos)
            and all(r.nb_files == len(needed[r.repo_id]) for r in info.repos)
        )
        check("(a) scan_cache_dir sees ptune's cache: both repos, refs main, every file, no warnings", ok, str(info.warnings))

        # (b) huggingface_hub downloads, ptune finds
        cache_b = os.path.join(work, "cache-python")
        for repo, names in needed.items():
            py = snapshot_download(repo, cache_dir=cache_b)
            got = ptune_resolve(repo, {"HF_HUB_CACHE": cache_b, "HF_HUB_OFFLINE": "1"})
            check(f"(b) ptune with HF_HUB_OFFLINE=1 resolves huggingface_hub's snapshot of {repo}", got.get("dir") == py, str(got))
            before = blob_state(cache_b)
            got = ptune_resolve(repo, {"HF_HUB_CACHE": cache_b, "HF_ENDPOINT": endpoint})
            check(f"(b) ptune online reuses huggingface_hub's blobs of {repo}", got.get("dir") == py and blob_state(cache_b) == before, str(got))
            if "dir" in got:
                ok = all(sha256_file(os.path.join(got["dir"], f)) == source(repo, f) for f in names)
                check(f"(b) the files ptune resolves in huggingface_hub's cache of {repo} are intact", ok)

        # (c) one file by huggingface_hub, the rest by ptune, all found by huggingface_hub offline
        cache_c = os.path.join(work, "cache-mixed")
        first = hf_hub_download("org/tiny-bert", "config.json", cache_dir=cache_c)
        got = ptune_resolve("org/tiny-bert", {"HF_HUB_CACHE": cache_c, "HF_ENDPOINT": endpoint})
        check("(c) ptune completes a model huggingface_hub started", got.get("dir") == os.path.dirname(first), str(got))
        try:
            ok = all(
                hf_hub_download("org/tiny-bert", f, cache_dir=cache_c, local_files_only=True) == os.path.join(os.path.dirname(first), f)
                for f in needed["org/tiny-bert"]
            )
            check("(c) huggingface_hub finds the completed model offline", ok)
        except Exception as e:  # noqa: BLE001
            check("(c) huggingface_hub finds the completed model offline", False, repr(e))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
