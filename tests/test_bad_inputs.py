"""The bad-input suite (issue 18, items 3, 7, 9): hostile inputs to every entry point, each of which must end in
exit code 2 and ONE line naming the problem with a Fix, before any model is loaded (the model loaders are
replaced by a tripwire), within a time bound, and without losing or falsely writing a result: every case runs
with a finished result.json already in its output folder, and that folder must be byte-for-byte unchanged
afterwards. One row of :data:`CASES` = entry point + arguments (+ a setup that breaks some data) + a substring
of the expected line. The entry points run in-process (the same exit path as their ``__main__``; one
subprocess test pins the real command line).

The run-lifecycle cases (two runs in one folder, a truncated checkpoint, a replaced finished run) are the
output-folder lock's and checkpoint verification's own tests (issue 18, items 1, 2, 4)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
#: seconds a user error may take (imports included); the real bound is "before the model loads", checked apart
TIME_BOUND_S = 60.0
SENTINEL = {"kind": "train", "status": "success", "note": "a finished result that must survive every bad input"}


# ------------------------------------------------------------------------------------------------ data


def _mmlu_rows(n: int, answer: str = "A") -> str:
    return "".join(f"Question {i}?,w{i},x{i},y{i},z{i},{answer}\n" for i in range(n))


def _write_data(root: Path) -> None:
    """Small valid copies of every local format the cases then break: MMLU (Hendrycks' CSVs), Alpaca, plain
    text, WMT16."""
    for split, n in (("dev", 5), ("test", 3)):
        (root / "mmlu" / split).mkdir(parents=True)
        (root / "mmlu" / split / f"anatomy_{split}.csv").write_text(_mmlu_rows(n))
    (root / "alpaca").mkdir()
    (root / "alpaca" / "a.json").write_text(json.dumps(
        [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(4)]))
    (root / "lm").mkdir()
    (root / "lm" / "t.txt").write_text("Some plain text to model. " * 40)
    (root / "wmt").mkdir()
    for stem, n in (("corpus", 4), ("newsdev2016", 2)):
        for lang in ("en", "ro"):
            (root / "wmt" / f"{stem}.{lang}").write_text("".join(f"{lang} sentence {i}\n" for i in range(n)))


def _edit(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(data: Path) -> None:
        path = data / rel
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return setup


def _remove(rel: str) -> Callable[[Path], None]:
    return lambda data: (data / rel).unlink()


# ------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    entry: str  # train | evaluate | mmlu | probe | plan | collect | analysis/<name>
    args: tuple[str, ...]  # {data}, {glue} and {out} are filled in
    problem: str  # a substring of the one line
    setup: Callable[[Path], None] | None = None  # breaks a copy of the data under {data}
    loads_model: bool = False  # the problem is the model itself: loading it is the check


T = ("model=tiny_roberta", "trainer=tiny", "task=glue/mrpc", "task.data_dir={glue}", "task.max_eval_samples=16",
     "output_dir={out}")
W = ("model=tiny_t5", "trainer=tiny", "task=wmt16/en_ro", "task.data_dir={data}/wmt", "output_dir={out}")
I = ("model=tiny_llama", "trainer=tiny", "task=instruct/alpaca", "task.data_dir={data}/alpaca",
     "task.train_file=a.json", "task.mmlu_dir={data}/mmlu", "task.mmlu_subjects=[anatomy]", "task.mmlu_eval_subjects=[anatomy]",
     "task.max_seq_len=256", "output_dir={out}")
L = ("model=tiny_llama", "trainer=tiny", "task=lm/text", "task.data_dir={data}/lm", "task.train_file=t.txt",
     "task.max_seq_len=64", "output_dir={out}")
M = ("--model", "{data}/no_model", "--data-dir", "{data}/mmlu", "--subjects", "anatomy", "--out", "{out}/mmlu.json")
P = ("--model", "tiny-roberta", "--method", "lora_fa", "--backend", "simulate", "--out", "{out}/probe")
UNDER_A_FILE = "{out}/result.json/sub"  # a path below the finished result.json: a regular file
NOT_UTF8 = "fine line\nbad \xff\xfe byte\n".encode("latin-1")

CASES: dict[str, Case] = {
    # --- train: Hydra's own errors
    "train unknown key": Case("train", (*T, "trainer.foo=1"), "Could not override 'trainer.foo'"),
    "train wrong type": Case("train", (*T, "trainer.max_steps=abc"), "could not be converted to Integer"),
    "train unknown option": Case("train", (*T, "method=bogus"), "Could not find 'method/bogus'"),
    "train bad override syntax": Case("train", (*T, "trainer.max_steps=["), "'['"),
    "train unknown flag": Case("train", (*T, "--foo"), "unrecognized arguments: --foo"),
    "train appended unknown key": Case("train", (*T, "+trainer.foo=1"), "unknown key trainer.foo"),
    # --- train: values
    "train max_steps=-5": Case("train", (*T, "trainer.max_steps=-5"), "trainer.max_steps must be > 0"),
    "train max_steps=0": Case("train", (*T, "trainer.max_steps=0"), "trainer.max_steps must be > 0"),
    "train seq len past positions": Case("train", (*T, "task.max_seq_len=1000"), "159 usable positions"),
    "train output_dir under a file": Case("train", (*T, f"output_dir={UNDER_A_FILE}"), "is a regular file"),
    "train rank 0": Case("train", (*T, "method=lora_fa", "method.rank=0"), "method.rank must be > 0"),
    "train negative lr": Case("train", (*T, "optim.lr=-1"), "optim.lr must be > 0"),
    "train batch 0": Case("train", (*T, "trainer.batch_size=0"), "trainer.batch_size must be > 0"),
    "train dropout 1.5": Case("train", (*T, "method=lora", "method.dropout=1.5"), "method.dropout"),
    "train eval samples 0": Case("train", (*T, "task.max_eval_samples=0"), "task.max_eval_samples must be > 0"),
    "train eval_every -1": Case("train", (*T, "trainer.eval_every=-1"), "trainer.eval_every must be >= 0"),
    "train unknown target module": Case("train", (*T, "method=lora", "method.target_modules=[nosuch]"), "nosuch"),
    "train on_config_change typo": Case("train", (*T, "on_config_change=maybe"), "on_config_change must be one of"),
    "train missing data dir": Case("train", (*T, "task.data_dir={data}/nope"), "nope"),
    # --- train: data files (WMT16, Alpaca, MMLU), found before the model loads
    "wmt16 empty corpus": Case("train", W, "corpus.en is empty",
                               lambda d: [_edit(f"wmt/corpus.{x}", "")(d) for x in ("en", "ro")]),
    "wmt16 not UTF-8": Case("train", W, "corpus.ro, line 2: not UTF-8", _edit("wmt/corpus.ro", NOT_UTF8)),
    "wmt16 misaligned": Case("train", W, "must be aligned", _edit("wmt/corpus.ro", "one line\n")),
    "alpaca not UTF-8": Case("train", I, "a.json, line 2: not UTF-8", _edit("alpaca/a.json", NOT_UTF8)),
    "lm text not UTF-8": Case("train", L, "t.txt, line 2: not UTF-8", _edit("lm/t.txt", NOT_UTF8)),
    "lm text too short": Case("train", L, "fewer than 1 held-out + 1 training", _edit("lm/t.txt", "short")),
    "alpaca empty file": Case("train", I, "holds no records", _edit("alpaca/a.json", "")),
    "alpaca not JSON": Case("train", I, "a.json, line 2: not JSON",
                            _edit("alpaca/a.json", '{"instruction": "a"}\n{oops\n')),
    "alpaca field missing": Case("train", I, "lacks field(s) ['output']",
                                 _edit("alpaca/a.json", '[{"instruction": "a", "input": ""}]')),
    "train mmlu answer E": Case("train", I, "line 2: answer 'E'", _edit("mmlu/dev/anatomy_dev.csv",
                                                                       _mmlu_rows(1) + _mmlu_rows(4, "E"))),
    "train mmlu 5 columns": Case("train", I, "line 3: 5 columns", _edit("mmlu/test/anatomy_test.csv",
                                                                       _mmlu_rows(2) + "q,a,b,c,A\n")),
    "train mmlu k-shot 100": Case("train", (*I, "task.mmlu_k_shot=100"), "100-shot needs 100"),
    "train mmlu unknown subject": Case("train", (*I, "task.mmlu_subjects=[nope]"), "unknown MMLU subject"),
    "train mmlu file missing": Case("train", I, "anatomy_test.csv not found", _remove("mmlu/test/anatomy_test.csv")),
    "train mmlu empty test": Case("train", I, "holds no questions", _edit("mmlu/test/anatomy_test.csv", "")),
    # --- evaluate (the same Hydra entry and checks)
    "evaluate unknown key": Case("evaluate", (*T, "trainer.foo=1"), "Could not override 'trainer.foo'"),
    "evaluate output_dir under a file": Case("evaluate", (*T, f"output_dir={UNDER_A_FILE}"), "is a regular file"),
    "evaluate seq len past positions": Case("evaluate", (*T, "task.max_seq_len=1000"), "159 usable positions"),
    # --- the MMLU CLI: every check before the model loads, the model's own failure in one line
    "mmlu 5 columns": Case("mmlu", M, "line 2: 5 columns", _edit("mmlu/test/anatomy_test.csv",
                                                                 _mmlu_rows(1) + "q,a,b,c,A\n")),
    "mmlu answer E": Case("mmlu", M, "answer 'E'", _edit("mmlu/test/anatomy_test.csv", _mmlu_rows(3, "E"))),
    "mmlu not UTF-8": Case("mmlu", M, "not UTF-8", _edit("mmlu/dev/anatomy_dev.csv", NOT_UTF8)),
    "mmlu k-shot 100": Case("mmlu", (*M, "--k-shot", "100"), "100-shot needs 100"),
    "mmlu batch size 0": Case("mmlu", (*M, "--batch-size", "0"), "--batch-size"),
    "mmlu no subjects": Case("mmlu", (*M, "--subjects"), "--subjects: expected at least one argument"),
    "mmlu unknown subject": Case("mmlu", (*M, "--subjects", "nope"), "unknown MMLU subject"),
    "mmlu out under a file": Case("mmlu", (*M, "--out", f"{UNDER_A_FILE}.json"), "is a regular file"),
    "mmlu bad model": Case("mmlu", M, "cannot load model", loads_model=True),
    # --- memory probe and planner
    "probe rank 0": Case("probe", (*P, "--rank", "0"), "needs a rank > 0"),
    "probe unknown method": Case("probe", (*P, "--method", "lorafa"), "unknown method 'lorafa'"),
    "probe seq len past positions": Case("probe", (*P, "--seq-len", "1000"), "159 usable positions"),
    "probe batch 0": Case("probe", (*P, "--batch-size", "0"), "--batch-size"),
    "probe out under a file": Case("probe", (*P, "--out", UNDER_A_FILE), "is a regular file"),
    "probe no such model": Case("probe", (*P, "--model", "{data}/nope/config.json"),
                                "cannot read a transformers config"),
    "plan seq len past positions": Case("plan", ("--model", "roberta-base", "--seq-len", "2048", "--out",
                                                 "{out}/plan.json"), "512 usable positions"),
    "plan rank 0": Case("plan", ("--model", "roberta-base", "--rank", "0"), "--rank"),
    "plan unknown method": Case("plan", ("--model", "roberta-base", "--methods", "ft,nope"), "unknown method 'nope'"),
    "plan out under a file": Case("plan", ("--model", "roberta-base", "--out", f"{UNDER_A_FILE}.json"),
                                  "is a regular file"),
    # --- collect and the renderers
    "collect no such folder": Case("collect", ("{data}/nope", "--out", "{out}/runs.csv"), "no such folder"),
    "collect out under a file": Case("collect", ("{data}", "--out", f"{UNDER_A_FILE}.csv"), "is a regular file"),
    **{f"{name} no runs": Case(f"analysis/{name}", ("--results", "{data}/no_runs", "--out", "{out}"), problem)
       for name, problem in (("table1", "no successful GLUE"), ("table2", "no successful WMT16"),
                             ("table3", "no successful instruction-tuning"), ("fig2_convergence", "no successful"),
                             ("fig4_rank_lr_heatmap", "no successful"))},
    "table4 no probes": Case("analysis/table4", ("--results", "{data}/no_runs"), "no memory_probe result.json"),
    "table1 out under a file": Case("analysis/table1", ("--results", "{data}", "--out", UNDER_A_FILE),
                                    "is a regular file"),
    # --- run lifecycle (two runs in one folder, a truncated checkpoint, a replaced finished run): the output-folder
    # lock's and checkpoint verification's own tests (issue 18, items 1, 2, 4)
}


# ------------------------------------------------------------------------------------------------ running


class ModelLoaded(RuntimeError):
    """The tripwire: a model loader ran."""


def _analysis(name: str):  # noqa: ANN202 - a module loaded from analysis/
    spec = importlib.util.spec_from_file_location(f"bad_inputs_{name}", REPO / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call(entry: str, argv: list[str], monkeypatch: pytest.MonkeyPatch, hydra_dir: Path) -> int:
    """Run one entry point in-process; its exit code (0 when it returned normally)."""
    try:
        if entry in ("train", "evaluate"):
            from hydra.core.global_hydra import GlobalHydra

            import lorafa_repro.evaluate
            import lorafa_repro.train

            GlobalHydra.instance().clear()
            # Hydra's logging setup (dictConfig) would close handlers other imports (absl, via rouge_score) hold
            # on pytest's captured stderr: no logging config in-process (it does not touch the error path)
            monkeypatch.setattr(sys, "argv", [entry, *argv, f"hydra.run.dir={hydra_dir}", "hydra/job_logging=none",
                                              "hydra/hydra_logging=none"])
            {"train": lorafa_repro.train, "evaluate": lorafa_repro.evaluate}[entry].main()
        elif entry.startswith("analysis/"):
            _analysis(entry.split("/")[1]).main(argv)
        else:
            import lorafa_repro.collect
            import lorafa_repro.memory.plan
            import lorafa_repro.memory.probe
            import lorafa_repro.mmlu

            {"mmlu": lorafa_repro.mmlu, "probe": lorafa_repro.memory.probe, "plan": lorafa_repro.memory.plan,
             "collect": lorafa_repro.collect}[entry].main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tripwires(monkeypatch: pytest.MonkeyPatch, loaded: list[str]) -> None:
    """Every way the entry points load a model, or run a probe step, records itself and raises."""
    import lorafa_repro.memory.plan
    import lorafa_repro.memory.probe
    import lorafa_repro.mmlu
    import lorafa_repro.models
    import lorafa_repro.run

    def wire(name: str) -> Callable[..., None]:
        def tripped(*args: object, **kwargs: object) -> None:
            loaded.append(name)
            raise ModelLoaded(name)
        return tripped

    for module, attr in ((lorafa_repro.run, "build_model"), (lorafa_repro.models, "build_model"),
                         (lorafa_repro.mmlu, "load_model"), (lorafa_repro.memory.probe, "run_probe"),
                         (lorafa_repro.memory.plan, "plan_method")):
        monkeypatch.setattr(module, attr, wire(f"{module.__name__}.{attr}"))


def _verdict(case: Case, code: int, err: str, loaded: list[str], seconds: float, before: dict[str, bytes],
             after: dict[str, bytes]) -> list[str]:
    """What is wrong with one outcome (empty: clean)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    problems = []
    if code != 2:
        problems.append(f"exit code {code}, not 2")
    if len(lines) != 1:
        problems.append(f"{len(lines)} error lines, not 1")
    elif case.problem not in lines[0] or "Fix:" not in lines[0]:
        problems.append(f"the line lacks {case.problem!r} or a Fix: {lines[0]!r}")
    if "Traceback" in err:
        problems.append("a traceback")
    if loaded and not case.loads_model:
        problems.append(f"a model was loaded first ({loaded[0]})")
    if seconds > TIME_BOUND_S:
        problems.append(f"{seconds:.1f} s to the error")
    if after != before:
        problems.append(f"the output folder changed: {sorted(set(after) ^ set(before)) or 'a file rewritten'}")
    return problems


def test_bad_inputs_end_in_one_line_and_lose_nothing(synthetic_glue: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _write_data(tmp_path / "pristine")
    report: dict[str, list[str]] = {}
    lost = 0
    for i, (name, case) in enumerate(CASES.items()):
        data, out = tmp_path / f"case{i}" / "data", tmp_path / f"case{i}" / "out"
        shutil.copytree(tmp_path / "pristine", data)
        if case.setup is not None:
            case.setup(data)
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps(SENTINEL))
        before = _snapshot(out)
        argv = [a.format(data=data, glue=synthetic_glue, out=out) for a in case.args]
        loaded: list[str] = []
        with monkeypatch.context() as mp:
            if not case.loads_model:
                _tripwires(mp, loaded)
            capsys.readouterr()
            t0 = time.perf_counter()
            code = _call(case.entry, argv, mp, tmp_path / f"case{i}" / "hydra")
            seconds = time.perf_counter() - t0
        err = capsys.readouterr().err
        after = _snapshot(out)
        lost += after.get("result.json") != before["result.json"]
        report[name] = _verdict(case, code, err, loaded, seconds, before, after)
        if report[name]:
            report[name].append(f"stderr: {err.strip()[-600:]!r}")
    clean = sum(not v for v in report.values())
    print(f"bad inputs tried {len(CASES)}, clean {clean}, results lost {lost}")
    failed = {k: v for k, v in report.items() if v}
    assert not failed, "\n".join(f"{k}: {'; '.join(v)}" for k, v in failed.items())
    assert lost == 0


def test_good_inputs_pass_the_same_checks(synthetic_glue: Path, tmp_path: Path) -> None:
    """The checks refuse only what is wrong: the unbroken data and values of every family validate, the MMLU
    folder passes at k = its dev size (and fails one above), and the CLI accepts its longest sequence."""
    from lorafa_repro import mmlu
    from lorafa_repro.memory.step import ProbeConfig, check_positions
    from lorafa_repro.schema import validate
    from conftest import compose_cfg

    _write_data(tmp_path)
    for args in (T, W, I, L, (*T, "task.max_seq_len=159"), (*T, "trainer.max_steps=-1")):
        argv = [a.format(data=tmp_path, glue=synthetic_glue, out=tmp_path / "out") for a in args]
        validate(compose_cfg(argv))
    mmlu.check_local_mmlu(tmp_path / "mmlu", "test", ["anatomy"], k_shot=5)
    with pytest.raises(mmlu.MMLUDataError, match="6-shot needs 6"):
        mmlu.check_local_mmlu(tmp_path / "mmlu", "test", ["anatomy"], k_shot=6)
    check_positions(ProbeConfig(model="roberta-base", method="lora_fa", seq_len=512))


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-bert", "roberta-base"])
def test_position_limit_is_where_the_real_model_breaks(model: str) -> None:
    """``position_limit`` against the model itself: ``limit`` tokens run, ``limit + 1`` index past the position
    table (RoBERTa counts positions from pad_token_id + 1, so its limit is not max_position_embeddings - 2 in
    general: 159 for tiny-roberta with pad id 0, 512 for roberta-base with pad id 1)."""
    import torch
    from transformers import AutoModel

    from lorafa_repro.models import position_limit, shipped_config

    config = shipped_config(model, num_hidden_layers=1, hidden_size=32, intermediate_size=32, num_attention_heads=2)
    limit = position_limit(config)
    assert limit == {"tiny-roberta": 159, "tiny-bert": 160, "roberta-base": 512}[model]
    net = AutoModel.from_config(config).eval()
    with torch.no_grad():
        net(input_ids=torch.full((1, limit), 7))
        with pytest.raises((IndexError, RuntimeError)):
            net(input_ids=torch.full((1, limit + 1), 7))


def test_the_real_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    """The same path through ``python -m``: a Hydra error and a plan refusal, one line each, exit code 2."""
    for argv in (["lorafa_repro.train", "model=tiny_roberta", "trainer.foo=1", f"hydra.run.dir={tmp_path}"],
                 ["lorafa_repro.memory.plan", "--model", "roberta-base", "--seq-len", "2048"]):
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert proc.returncode == 2 and len(lines) == 1 and "Fix:" in lines[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
