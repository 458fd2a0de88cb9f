#!/usr/bin/env python3
"""Do ptune's PEFT adapters give ptune's answers in Hugging Face PEFT itself?

For every exportable case (model x method x head: P_TUNING, PROMPT_TUNING, PREFIX_TUNING on the mini models and
every tiny family), `node dist/scripts/peft-check.js` trains a short ptune run, exports it with
`ptune export --format peft` and records what ptune computes for a few inputs. This script then loads each
adapter with PeftModel.from_pretrained on the base model (transformers' own modeling code), runs the same
inputs, and compares the log-probabilities of the scored tokens at the answer position (tolerance 1e-4) and
the top-1. It prints one JSON object per case and a markdown table, and exits 1 when a case PEFT should
reproduce does not.

  npx tsc -p . && python scripts/peft-check.py            # a Python with torch, transformers and peft
  python scripts/peft-check.py --only gpt2 --steps 20

Not part of `npm test`.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/peft-check")
    ap.add_argument("--steps", default="12")
    ap.add_argument("--only", default=None)
    ap.add_argument("--reuse", action="store_true", help="compare an existing <out>/cases.json")
    a = ap.parse_args()
    if not a.reuse:
        cmd = ["node", os.path.join(ROOT, "dist", "scripts", "peft-check.js"), "--out", a.out, "--steps", a.steps]
        if a.only:
            cmd += ["--only", a.only]
        subprocess.run(cmd, check=True, cwd=ROOT)
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from peft import PeftModel

    torch.set_grad_enabled(False)
    cases = json.load(open(os.path.join(a.out, "cases.json")))
    rows, failed = [], 0
    for c in cases:
        row = {"case": c["name"]}
        if "error" in c:
            row.update(status="ptune error", detail=c["error"])
            rows.append(row)
            failed += 1
            print(json.dumps(row), flush=True)
            continue
        row.update(peft_type=c["peftType"], expected=c["reproducible"])
        try:
            auto = AutoModelForCausalLM if c["kind"] == "causal" else AutoModelForMaskedLM
            base = auto.from_pretrained(c["model"], torch_dtype=torch.float32, attn_implementation="eager")
            model = PeftModel.from_pretrained(base, c["adapter"])
            model.eval()
            worst, top_ok = 0.0, 0
            for ex in c["examples"]:
                ids = torch.tensor([ex["input_ids"]])
                kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
                if "token_type_ids" in ex:
                    kw["token_type_ids"] = torch.tensor([ex["token_type_ids"]])
                logits = model(**kw).logits[0]
                row_logits = logits[ex["position"]].double()
                if "normalise_over" in ex:  # a verbalizer: log-softmax over the label words' tokens
                    over = ex["normalise_over"]
                    logp = dict(zip(over, torch.log_softmax(row_logits[over], -1).tolist()))
                    got = [logp[i] for i in ex["ids"]]
                else:
                    logp = torch.log_softmax(row_logits, -1)
                    got = [logp[i].item() for i in ex["ids"]]
                worst = max(worst, max(abs(g - e) for g, e in zip(got, ex["logprobs"])))
                # top-1 among the scored ids (label words, or ptune's top-5 answers)
                top = ex["ids"][max(range(len(got)), key=lambda j: got[j])]
                top_ok += int(top == ex["top1"])
            ok = worst <= TOL and top_ok == len(c["examples"])
            row.update(status="same" if ok else "differs", max_abs_logprob_diff=worst, top1_agree=f"{top_ok}/{len(c['examples'])}")
        except Exception as e:  # a family transformers/PEFT cannot run prompt learning on
            row.update(status="PEFT error", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        if row["status"] != "same" and c["reproducible"]:
            failed += 1
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}\n")
    print("| case | PEFT type | result | max abs log-prob diff | top-1 agree |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        diff = f"{r['max_abs_logprob_diff']:.1e}" if "max_abs_logprob_diff" in r else "-"
        result = r["status"] + (f" ({r['detail']})" if "detail" in r else "")
        print(f"| {r['case']} | {r.get('peft_type', '-')} | {result} | {diff} | {r.get('top1_agree', '-')} |")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
