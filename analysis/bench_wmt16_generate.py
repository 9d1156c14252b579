"""Time our WMT16 evaluation against HF ``Seq2SeqTrainer.predict(predict_with_generate=True)`` on the same model.

    python analysis/bench_wmt16_generate.py --model t5-small --n 500 --num-beams 4 --max-new-tokens 128 \
        --data-dir ../shared/data/wmt16_en_ro --out results/wmt16_generate_bench

Both tools get the same weights (a shipped architecture, random init from --seed, optionally trained for
--train-steps steps of full fine-tuning on the first Europarl pairs so that the hypotheses are not pure noise),
the same byte tokenizer, the first --n newsdev2016 sentences encoded the same way (prefix + source, at most
--max-seq-len tokens; labels at most --max-target-len), the same batch size and the same beam settings.
Timed: ours = ``Wmt16Task.evaluate`` (length-sorted batched beam search, teacher-forced eval loss, sacreBLEU /
chrF / ROUGE-L, the predictions file); HF = ``Seq2SeqTrainer.predict`` (generation plus its loss on the labels)
followed by decoding and the same metric function. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lorafa_repro.models import build_model, build_tokenizer
from lorafa_repro.results import env_info, write_json_atomic
from lorafa_repro.schema import TaskConfig
from lorafa_repro.tasks.wmt16 import Wmt16Task, translation_metrics


def make_task(args: argparse.Namespace) -> Wmt16Task:
    cfg = OmegaConf.structured(TaskConfig(family="wmt16", name="en_ro", data_dir=str(args.data_dir),
                                          max_seq_len=args.max_seq_len, max_target_len=args.max_target_len,
                                          max_eval_samples=args.n, max_train_samples=args.train_steps * 16 or 16,
                                          model_arch="encoder_decoder", num_beams=args.num_beams,
                                          max_new_tokens=args.max_new_tokens))
    return Wmt16Task(cfg)


def brief_training(model: torch.nn.Module, task: Wmt16Task, tok, steps: int, seed: int) -> None:
    if steps <= 0:
        return
    data, collate = task.train_dataset(tok), task.collate_fn(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(data), (16,), generator=g).tolist()
        loss = model(**collate([data[i] for i in idx])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def ours(model, task: Wmt16Task, tok, batch_size: int, out_dir: Path) -> tuple[float, dict, list[str]]:
    t0 = time.perf_counter()
    metrics = task.evaluate(model, tok, batch_size=batch_size, device=torch.device("cpu"),
                            autocast=contextlib.nullcontext, predictions_path=out_dir / "ours.jsonl")
    seconds = time.perf_counter() - t0
    hyps = [json.loads(line)["hypothesis"] for line in (out_dir / "ours.jsonl").read_text().splitlines()]
    return seconds, metrics, hyps


def hf(model, task: Wmt16Task, tok, batch_size: int, args: argparse.Namespace, out_dir: Path
       ) -> tuple[float, dict, list[str]]:
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    pairs = task.eval_pairs()
    rows = task._encode(pairs, tok)  # the same encoding as ours
    targs = Seq2SeqTrainingArguments(output_dir=str(out_dir / "hf"), per_device_eval_batch_size=batch_size,
                                     predict_with_generate=True, report_to=[], use_cpu=True,
                                     dataloader_num_workers=0, disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=targs, processing_class=tok,
                             data_collator=DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100))
    t0 = time.perf_counter()
    pred = trainer.predict(rows, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    ids = pred.predictions
    ids[ids == -100] = tok.pad_token_id
    hyps = [h.strip() for h in tok.batch_decode(ids, skip_special_tokens=True)]
    metrics = translation_metrics(hyps, [p.target for p in pairs])
    seconds = time.perf_counter() - t0
    metrics["eval_loss"] = pred.metrics.get("test_loss")
    return seconds, metrics, hyps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="t5-small", help="shipped architecture (src/lorafa_repro/model_configs)")
    ap.add_argument("--data-dir", type=Path, default=Path("../shared/data/wmt16_en_ro"))
    ap.add_argument("--n", type=int, default=500, help="first N newsdev2016 sentences")
    ap.add_argument("--num-beams", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--max-target-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=0, help="brief FT (batch 16) before scoring; 0 = random init")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/wmt16_generate_bench"))
    args = ap.parse_args()

    model_cfg = OmegaConf.create({"name": args.model, "arch": "encoder_decoder", "source": "shipped",
                                  "path": args.model, "tokenizer": "byte", "gguf_file": None})
    task = make_task(args)
    tok = build_tokenizer(model_cfg)
    torch.manual_seed(args.seed)
    model = build_model(model_cfg, task_kind="seq2seq")
    brief_training(model, task, tok, args.train_steps, args.seed)
    model.eval()
    with torch.no_grad():  # warm-up (kernels, allocator) so that neither tool pays it inside its timer
        model.generate(**tok(["warm up"], return_tensors="pt"), num_beams=args.num_beams, max_new_tokens=4)
    with tempfile.TemporaryDirectory() as tmp:
        hf_s, hf_m, hf_h = hf(model, task, tok, args.batch_size, args, Path(tmp))
        our_s, our_m, our_h = ours(model, task, tok, args.batch_size, Path(tmp))
    same = sum(a == b for a, b in zip(our_h, hf_h))
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "ours_s": our_s, "hf_s": hf_s, "time_ratio_ours_over_hf": our_s / hf_s,
              "bleu_ours": our_m["bleu"], "bleu_hf": hf_m["bleu"], "bleu_abs_diff": abs(our_m["bleu"] - hf_m["bleu"]),
              "rougeL_ours": our_m["rougeL"], "rougeL_hf": hf_m["rougeL"],
              "identical_hypotheses": same, "sentences": len(our_h), "eval_loss_ours": our_m["eval_loss"],
              "eval_loss_hf": hf_m["eval_loss"], "bleu_signature": our_m["bleu_signature"], "env": env_info()}
    write_json_atomic(args.out.with_suffix(".json"), result)
    cmd = "python analysis/bench_wmt16_generate.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in result["args"].items())
    md = ["# WMT16 evaluation speed: ours vs HF Seq2SeqTrainer.predict(predict_with_generate=True)", "",
          f"Command: `{cmd}`", "",
          f"Model: shipped {args.model} architecture (random init, seed {args.seed}"
          + (f", then {args.train_steps} FT steps of batch 16 on Europarl" if args.train_steps else "") + "), byte "
          f"tokenizer; first {args.n} newsdev2016 sentences; {args.num_beams} beams, up to {args.max_new_tokens} new "
          f"tokens; batch {args.batch_size}; CPU ({result['env']['device']}), torch threads "
          f"{torch.get_num_threads()}.", "",
          "| tool | seconds | BLEU | ROUGE-L | eval loss |", "|---|---|---|---|---|",
          f"| ours (Wmt16Task.evaluate) | {our_s:.1f} | {our_m['bleu']:.2f} | {our_m['rougeL']:.2f} | "
          f"{our_m['eval_loss']:.4f} |",
          f"| HF Seq2SeqTrainer.predict | {hf_s:.1f} | {hf_m['bleu']:.2f} | {hf_m['rougeL']:.2f} | "
          f"{hf_m['eval_loss']:.4f} |", "",
          f"Time ratio ours / HF: **{our_s / hf_s:.2f}**; |BLEU difference|: {result['bleu_abs_diff']:.3f}; "
          f"identical hypotheses: {same} / {len(our_h)}."]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
