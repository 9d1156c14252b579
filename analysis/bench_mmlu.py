"""Our MMLU k-shot evaluation vs lm-evaluation-harness: same in-memory model, same questions; time and predictions.

    python analysis/bench_mmlu.py --model <hub id or dir> [--gguf-file F] --data-dir ../shared/data/mmlu \
        --subjects ... --limit-per-subject N [--batch-size 8] --out results/mmlu_bench

The model is loaded once and handed to both (lm-eval as ``HFLM(pretrained=model, tokenizer=tokenizer)``, same
batch size, device and dtype). Timed: each tool's evaluation call from the question lists to per-question
predictions (prompt building, tokenization and the forward passes; lm-eval's task building from the local data
files included, model loading excluded). With ``--full-prompts`` ours also runs without the shared few-shot KV
prefix (full prompts, length-sorted batches), to show where the speed comes from. Writes <out>/bench.json and
<out>/bench.md (the command, the times, the ratio, the prediction agreement).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from lorafa_repro import mmlu
from lorafa_repro.mmlu_lmeval import run_lm_eval
from lorafa_repro.results import env_info, write_json_atomic


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--limit-per-subject", type=int, default=None)
    p.add_argument("--k-shot", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--full-prompts", action="store_true", help="also time ours without the shared prefix")
    p.add_argument("--out", default="results/mmlu_bench")
    a = p.parse_args(argv)
    command = "python analysis/bench_mmlu.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))

    model, tok = mmlu.load_model(a.model, gguf_file=a.gguf_file)
    test = mmlu.load_split(a.data_dir, "test", a.subjects, a.limit_per_subject)
    dev = mmlu.load_split(a.data_dir, "dev", a.subjects)
    n = sum(len(v) for v in test.values())
    runs = {}
    modes = (("ours_shared_prefix", True), ("ours_full_prompts", False))[: 2 if a.full_prompts else 1]
    for name, share in modes:
        t0 = time.perf_counter()
        res = mmlu.evaluate_mmlu(model, tok, data_dir=a.data_dir, subjects=a.subjects,
                                 limit_per_subject=a.limit_per_subject, k_shot=a.k_shot, batch_size=a.batch_size,
                                 share_prefix=share)
        runs[name] = {"seconds": time.perf_counter() - t0, "micro": res["micro"], "macro": res["macro"],
                      "predictions": {(r["subject"], r["index"]): r["prediction"] for r in res["predictions"]}}
        print(f"{name}: {runs[name]['seconds']:.1f} s", flush=True)
    theirs = run_lm_eval(model, tok, test, dev, k_shot=a.k_shot, batch_size=a.batch_size)
    print(f"lm-eval: {theirs['seconds']:.1f} s", flush=True)

    ours = runs["ours_shared_prefix"]["predictions"]
    agree = sum(ours[k] == theirs["predictions"].get(k) for k in ours)
    prompts_equal = all(theirs["contexts"][(s, q.index)] == mmlu.build_prompt(q, dev[s][:a.k_shot])
                        for s, qs in test.items() for q in qs)
    full = runs.get("ours_full_prompts")
    out = {"command": command, "model": a.model, "gguf_file": a.gguf_file, "subjects": a.subjects,
           "limit_per_subject": a.limit_per_subject, "n_questions": n, "k_shot": a.k_shot,
           "batch_size": a.batch_size, "torch_threads": torch.get_num_threads(),
           "seconds": {k: v["seconds"] for k, v in runs.items()} | {"lm_eval": theirs["seconds"]},
           "ratio_lm_eval_over_ours": theirs["seconds"] / runs["ours_shared_prefix"]["seconds"],
           "ratio_lm_eval_over_ours_full_prompts": theirs["seconds"] / full["seconds"] if full else None,
           "identical_predictions": agree == n, "agreeing_predictions": agree,
           "full_prompts_agree_with_shared": full["predictions"] == ours if full else None,
           "identical_prompts": prompts_equal,
           "micro": runs["ours_shared_prefix"]["micro"], "macro": runs["ours_shared_prefix"]["macro"],
           "env": env_info()}
    dest = Path(a.out)
    write_json_atomic(dest / "bench.json", out)
    s = out["seconds"]
    lines = ["# MMLU 5-shot: our evaluator vs lm-evaluation-harness", "", f"Command: `{command}`", "",
             f"Model `{a.model}`" + (f" (`{a.gguf_file}`, dequantized to fp32)" if a.gguf_file else "") +
             f", {n} test questions ({', '.join(a.subjects)}; first {a.limit_per_subject} each), {a.k_shot}-shot, "
             f"batch {a.batch_size}, CPU, {out['torch_threads']} torch thread(s).", "",
             "| evaluator | seconds | lm-eval time / this time |", "|---|---|---|",
             f"| ours (shared few-shot KV prefix, default) | {s['ours_shared_prefix']:.1f} | "
             f"{out['ratio_lm_eval_over_ours']:.2f} |"]
    if full:
        lines.append(f"| ours (full prompts, length-sorted batches) | {s['ours_full_prompts']:.1f} | "
                     f"{out['ratio_lm_eval_over_ours_full_prompts']:.2f} |")
    lines += [f"| lm-eval 0.4 (`HFLM`, in-memory model, local data) | {s['lm_eval']:.1f} | 1.00 |", "",
              f"Predictions identical to lm-eval's: **{out['identical_predictions']}** ({agree}/{n}); prompt "
              f"strings identical: {prompts_equal}" + (f"; our two modes agree: {out['full_prompts_agree_with_shared']}"
                                                       if full else "") +
              f". Accuracy (ours): micro {100 * out['micro']:.1f}, macro {100 * out['macro']:.1f}.", ""]
    (dest / "bench.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
