# make plan-vs-accelerate  (= PYTHONPATH=src python3 analysis/plan_vs_accelerate.py)
"""Our memory plan beside ``accelerate estimate-memory`` for the configs in results/plan_vs_accelerate/configs/.

``accelerate estimate-memory`` takes only a Hub id (it calls ``huggingface_hub.model_info`` first), so its own
functions are called here on the same model built on the meta device, exactly as its CLI does
(``accelerate.commands.estimate``: ``calculate_maximum_sizes`` on the empty model, then
``estimate_training_usage`` per dtype; the CLI's "Training using Adam" column is the max over its dict).
Writes comparison.json and comparison.md next to the configs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "plan_vs_accelerate"
SEQ_LEN, BATCH, BUDGET_GB, RANK = 2048, 1, 24.0, 16
METHODS = ["ft", "lora", "lora_fa", "qlora", "qlora_fa"]
GIB = 2**30


def accelerate_numbers(config_dir: Path) -> dict[str, Any]:
    """accelerate's numbers for the model of ``config_dir``, built as its CLI's ``create_empty_model`` builds it:
    ``AutoModel`` (the base model: no LM head, as the CLI uses when the config has no ``auto_map``) in fp32
    under ``init_empty_weights``."""
    from accelerate import init_empty_weights
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(config_dir)
    with init_empty_weights():
        model = AutoModel.from_config(cfg, dtype=torch.float32)
    total, largest = calculate_maximum_sizes(model)
    out: dict[str, Any] = {"total_size_fp32": int(total), "largest_layer_fp32": int(largest[0])}
    for dtype, div in (("float32", 1), ("float16", 2), ("int8", 4), ("int4", 8)):
        train = estimate_training_usage(total, dtype)
        out[dtype] = {"load_bytes": int(total / div),
                      "training_adam_bytes": None if max(train.values()) == -1 else int(max(train.values())),
                      "training_parts": train}
    return out


def our_numbers(config_dir: Path) -> dict[str, Any]:
    from lorafa_repro.memory.plan import plan

    t0 = time.perf_counter()
    config_dir = config_dir.relative_to(ROOT)  # main() runs in ROOT: no machine's absolute path in the output
    bf16 = plan(str(config_dir), METHODS, budget_gb=BUDGET_GB, seq_len=SEQ_LEN, batch_size=BATCH, dtype="bf16",
                rank=RANK)
    mixed_ft = plan(str(config_dir), ["ft"], budget_gb=BUDGET_GB, seq_len=SEQ_LEN, batch_size=BATCH, dtype="mixed")
    print(f"  planned in {time.perf_counter() - t0:.1f} s", flush=True)  # not stored: same inputs, same bytes
    return _without_timing({"bf16": bf16, "mixed_ft": mixed_ft["methods"][0]})


def _without_timing(value: Any) -> Any:
    """``value`` less the planner's ``wall_s`` entries, at any depth (timings differ run to run)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k != "wall_s"}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def g(n: float | int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def main() -> int:
    from lorafa_repro.quiet import quiet_known_warnings
    from lorafa_repro.results import write_json_atomic

    quiet_known_warnings()
    os.chdir(ROOT)
    rows = []
    for config_dir in sorted(p for p in (OUT / "configs").iterdir() if (p / "config.json").exists()):
        source = json.loads((config_dir / "config.json").read_text()).get("_source", "?")
        acc = accelerate_numbers(config_dir)
        ours = our_numbers(config_dir)
        print(f"{config_dir.name}: accelerate fp16 training {g(acc['float16']['training_adam_bytes'])} GiB | ours "
              + ", ".join(f"{r['method']} {r['peak_gib']:.2f}" for r in ours["bf16"]["methods"])
              + " GiB", flush=True)
        rows.append({"name": config_dir.name, "source": source, "accelerate": acc, "ours": ours})
    write_json_atomic(OUT / "comparison.json", {"seq_len": SEQ_LEN, "batch_size": BATCH, "rank": RANK,
                                                 "budget_gb": BUDGET_GB, "models": rows})
    lines = [f"All numbers GiB (2^30 bytes). Ours: one training step, batch {BATCH} x {SEQ_LEN} tokens, AdamW, "
             f"rank {RANK}, SDPA attention, peak of bytes held by tensors. accelerate: its CLI's numbers "
             "(no batch, no sequence length).", "",
             "| model | params (B) | accel. load fp32 | accel. load fp16 | accel. train fp32 | accel. train fp16 "
             "| ours FT mixed | ours FT bf16 | ours LoRA | ours LoRA-FA | ours QLoRA | ours QLoRA-FA |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc, ours = r["accelerate"], r["ours"]
        by = {m["method"]: m for m in ours["bf16"]["methods"]}
        params = by["ft"]["params"]["total"] / 1e9
        lines.append(f"| {r['name']} | {params:.2f} | {g(acc['float32']['load_bytes'])} | "
                     f"{g(acc['float16']['load_bytes'])} | {g(acc['float32']['training_adam_bytes'])} | "
                     f"{g(acc['float16']['training_adam_bytes'])} | {g(ours['mixed_ft']['peak_bytes'])} | "
                     + " | ".join(g(by[m]["peak_bytes"]) for m in METHODS) + " |")
    lines += ["", "Breakdown of our peaks (weights / gradients / optimizer states / activations / temporaries):", ""]
    for r in rows:
        for m in [r["ours"]["mixed_ft"] | {"method": "ft (mixed)"}, *r["ours"]["bf16"]["methods"]]:
            b = m["breakdown"]
            lines.append(f"- {r['name']} {m['method']}: " + " / ".join(
                g(b[k]) for k in ("weights", "gradients", "optimizer_states", "activations", "temporaries")))
    (OUT / "comparison.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / 'comparison.json'} and {OUT / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
