"""Table 1 renders from result.json files alone, next to the paper's numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import REPO, compose_cfg
from lorafa_repro.run import run


def _table1():
    spec = importlib.util.spec_from_file_location("table1", REPO / "analysis" / "table1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table1_renders_runs_next_to_the_paper(synthetic_glue: Path, tmp_path: Path) -> None:
    for seed in (0, 1):
        cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "trainer.max_steps=2", "method=lora_fa",
                           "task=glue/rte", f"task.data_dir={synthetic_glue}", f"seed={seed}"])
        run(cfg, tmp_path / "raw" / f"seed{seed}")
    table = _table1().render(tmp_path / "raw", tmp_path / "out")
    row = table[(table["model"] == "tiny-roberta (random init)") & (table["method"] == "lora_fa")].iloc[0]
    assert 0 <= row["rte_ours"] <= 100 and row["mrpc_ours"] is None
    paper = table[(table["model"] == "roberta-base") & (table["method"] == "lora_fa")].iloc[0]
    assert paper["rte_paper"] == 67.9
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| roberta-base | lora_fa | 1.8 / - |" in md  # no random-init run fills the paper's pretrained row
    assert "| tiny-roberta (random init) | lora_fa |" in md
