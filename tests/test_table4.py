"""Table 4 runner and renderer (issue #4): the cell list, skipping finished cells, OOM rows, and
rendering from result files alone."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from lorafa_repro.memory import table4 as T
from lorafa_repro.memory.probe import ProbeConfig
from lorafa_repro.methods import METHODS, Method, apply_method

REPO = Path(__file__).resolve().parents[1]
TINY = dict(rank=4, batch_size=4, seq_len=16)


def renderer() -> ModuleType:
    """analysis/table4.py as a module."""
    spec = importlib.util.spec_from_file_location("analysis_table4", REPO / "analysis" / "table4.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cells_cover_the_papers_18(monkeypatch) -> None:
    paper = pd.read_csv(REPO / "analysis" / "paper_tables" / "table4_memory.csv", comment="#")
    cells = {(c.model, c.method, c.rank, c.batch_size) for c in T.table_cells()}
    for _, row in paper.iterrows():
        rank = None if pd.isna(row["rank"]) else int(row["rank"])
        assert (row["model"], row["method"], rank, row["batch_size"]) in cells
    assert len(paper) == 18


def test_registered_4bit_methods_join_the_table(monkeypatch) -> None:
    """A 4-bit method registered in METHODS (qlora_fa, later) gets its rows without touching table4.py."""
    monkeypatch.setitem(METHODS, "qlora_fa_test", Method("qlora_fa_test", "test", apply_method, quantize_4bit=True))
    assert T.table_methods()[:3] == ["ft", "lora", "lora_fa"]
    assert {"qlora", "qlora_fa_test"} <= set(T.table_methods())
    assert sum(c.method == "qlora_fa_test" for c in T.table_cells()) == len(T.PAPER_CELLS)


def test_local_paper_copy_matches_shared() -> None:
    shared = REPO.parent / "shared" / "paper" / "tables" / "table4_memory.csv"
    if not shared.exists():
        pytest.skip("../shared not present")
    local = pd.read_csv(REPO / "analysis" / "paper_tables" / "table4_memory.csv", comment="#")
    pd.testing.assert_frame_equal(local, pd.read_csv(shared))


def _tiny_cells() -> list[ProbeConfig]:
    return [ProbeConfig(model="tiny-roberta", method=m, **TINY) for m in ("ft", "lora", "lora_fa")] + [
        ProbeConfig(model="tiny-llama", method="lora", budget_gb=1e-5, **TINY)]  # over budget: an OOM row


def test_runner_skips_done_cells_and_reports_oom(tmp_path, monkeypatch, capsys) -> None:
    results = T.run_table(_tiny_cells(), tmp_path, "simulate")
    assert [r["status"] for r in results] == ["success", "success", "success", "oom"]
    assert "analytic" in results[0]["memory"] and "peak_bytes" in results[3]["memory"]

    def no_rerun(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(T, "run_cell", no_rerun)
    again = T.run_table(_tiny_cells(), tmp_path, "simulate")
    assert [r["status"] for r in again] == ["success", "success", "success", "oom"]
    assert capsys.readouterr().out.count("done already") == 4


def test_render_from_result_files_only(tmp_path, monkeypatch) -> None:
    T.run_table(_tiny_cells(), tmp_path, "simulate")
    import lorafa_repro.memory.probe as P

    def no_probe(*a, **k):
        raise AssertionError("rendering must not recompute")

    monkeypatch.setattr(P, "probe", no_probe)
    monkeypatch.setattr(T, "probe", no_probe)
    paths = renderer().render(tmp_path)
    md = paths["md"].read_text()
    assert "| tiny-llama | LoRA | 4 | 4 | - | OOM (" in md
    df = pd.read_csv(paths["csv"])
    fa = df[(df.model == "tiny-roberta") & (df.method == "lora_fa")].iloc[0]
    lora = df[(df.model == "tiny-roberta") & (df.method == "lora")].iloc[0]
    assert fa["ratio_ours"] == pytest.approx(lora["ours_bytes"] / fa["ours_bytes"], abs=1e-3)
    assert fa["ratio_ours"] > 1
    assert dict(zip(df["model"] + "/" + df["method"], df["oom"])) == {
        "tiny-llama/lora": True, "tiny-roberta/ft": False, "tiny-roberta/lora": False, "tiny-roberta/lora_fa": False}
    assert paths["tex"].read_text().startswith(r"\begin{tabular}")
    # a different budget re-judges OOM without recomputing
    assert "OOM" not in renderer().render(tmp_path, budget_gb=100.0)["md"].read_text().split("Notes:")[0]


def test_committed_table_renders(tmp_path) -> None:
    """results/table4 as committed: every paper row present, LLaMA-7B FT is OOM at the 40 GiB budget."""
    src = REPO / "results" / "table4"
    if not any(src.glob("*/result.json")):
        pytest.skip("no committed results/table4 yet")
    dst = tmp_path / "table4"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("table4.*"))
    df = pd.read_csv(renderer().render(dst, budget_gb=40.0)["csv"])
    assert df["paper_gb"].notna().sum() + df["paper_oom"].sum() == 18
    llama_ft = df[(df.model == "llama-7b") & (df.method == "ft")].iloc[0]
    assert bool(llama_ft["oom"]) and bool(llama_ft["paper_oom"])
    assert not df[df.model != "llama-7b"]["oom"].any()


def test_cli_rejects_unknown_model() -> None:
    with pytest.raises(SystemExit):
        T.main(["--models", "gpt-5", "--no-render"])


def test_result_files_are_valid_memory_probes() -> None:
    from lorafa_repro.results import validate_result

    for p in (REPO / "results" / "table4").glob("*/result.json"):
        data = json.loads(p.read_text())
        validate_result(data)
        assert data["kind"] == "memory_probe"


def test_gradient_checkpointing_variant_goes_to_its_own_folder(monkeypatch) -> None:
    """--gradient-checkpointing probes the same cells with recomputation into results/table4_ckpt (never over
    the committed table) and skips the precision study, which is about the paper's FT rows."""
    seen = {}

    def fake_run_table(cells, out_dir, backend, **kwargs):
        seen["cells"], seen["out"] = cells, out_dir
        return []

    monkeypatch.setattr(T, "run_table", fake_run_table)
    monkeypatch.setattr(T, "precision_study", lambda *a, **k: pytest.fail("no precision study with checkpointing"))
    assert T.main(["--gradient-checkpointing", "--models", "roberta-base", "--backend", "simulate",
                   "--no-render"]) == 0
    assert seen["out"] == Path("results/table4_ckpt")
    assert len(seen["cells"]) == len(T.table_methods()) and all(c.gradient_checkpointing for c in seen["cells"])
    assert not any(c.gradient_checkpointing for c in T.table_cells(["roberta-base"]))


def test_render_states_recomputation(tmp_path) -> None:
    cells = [ProbeConfig(model="tiny-roberta", method=m, gradient_checkpointing=True, **TINY)
             for m in ("lora", "lora_fa")]
    T.run_table(cells, tmp_path, "simulate")
    md = renderer().render(tmp_path)["md"].read_text()
    assert "tiny-roberta: batch 4, 16 tokens, fp32, eager attention, gradient checkpointing." in md


def test_a_cell_computed_with_other_code_is_recomputed(tmp_path, monkeypatch) -> None:
    cells = [ProbeConfig(model="tiny-roberta", method="lora_fa", **TINY)]
    T.run_table(cells, tmp_path, "simulate")
    stored = json.loads((tmp_path / T.cell_name(cells[0]) / "result.json").read_text())
    assert stored["config"]["code"] == T.code_fingerprint()
    assert T.is_current(tmp_path / T.cell_name(cells[0]) / "result.json", cells[0], "simulate")
    recomputed: list[str] = []
    real_run_cell = T.run_cell
    monkeypatch.setattr(T, "run_cell", lambda cfg, *a, **k: (recomputed.append(T.cell_name(cfg)),
                                                             real_run_cell(cfg, *a, **k))[1])
    monkeypatch.setattr(T, "code_fingerprint", lambda: "edited-code")  # e.g. methods/lora_fa.py changed
    T.run_table(cells, tmp_path, "simulate")
    assert recomputed == [T.cell_name(cells[0])]
    assert json.loads((tmp_path / T.cell_name(cells[0]) / "result.json").read_text())["config"]["code"] == "edited-code"


def test_the_committed_paper_numbers_are_the_shared_transcription() -> None:
    """Table 4 always reads analysis/paper_tables (so the rendered file does not depend on what lies beside the
    checkout); that copy must hold the same rows as ../shared/paper/tables/table4_memory.csv."""
    import sys
    from pathlib import Path

    import pandas as pd
    import pytest

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "analysis"))
    import table4

    if not table4.PAPER_CSV_SHARED.exists():
        pytest.skip(f"{table4.PAPER_CSV_SHARED} not present (../shared is not beside this checkout)")
    assert table4.paper_csv_path() == table4.PAPER_CSV_LOCAL
    shared, local = (pd.read_csv(p, comment="#") for p in (table4.PAPER_CSV_SHARED, table4.PAPER_CSV_LOCAL))
    pd.testing.assert_frame_equal(shared, local)
