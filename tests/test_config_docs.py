"""docs/config.md is generated from schema.py and conf/ (make docs) and must match what the code says now."""

from __future__ import annotations

from pathlib import Path

from lorafa_repro import config_docs


def test_committed_config_reference_is_current() -> None:
    committed = config_docs.DEFAULT_OUT.read_text()
    assert committed == config_docs.render(), "docs/config.md is stale. Fix: make docs"


def test_every_schema_key_and_group_option_is_on_the_page() -> None:
    page = config_docs.render()
    for key in config_docs._schema_defaults():
        if not key.startswith("logger."):  # the trackers' sections default to null: their keys are listed below
            assert f"| `{key}` |" in page, key
    for key in ("logger.tensorboard.dir", "logger.wandb.mode", "logger.mlflow.tracking_uri"):
        assert f"| `{key}` |" in page, key
    for path in config_docs.CONF_DIR.rglob("*.yaml"):
        if path.parent != config_docs.CONF_DIR:
            group = next(g for g in config_docs.config_groups() if path.is_relative_to(config_docs.CONF_DIR / g))
            option = path.relative_to(config_docs.CONF_DIR / group).with_suffix("").as_posix()
            assert f"| `{option}` |" in page, path


def test_field_comments_take_the_lines_above_and_stop_at_a_section_header() -> None:
    from lorafa_repro.schema import TaskConfig, TrainerConfig

    comments = config_docs.field_comments(TrainerConfig)
    assert comments["max_steps"].startswith("max_steps > 0 wins over epochs")
    assert comments["epochs"] == ""  # no comment of its own: not the one above max_steps
    task = config_docs.field_comments(TaskConfig)
    assert task["model_arch"].startswith("the model's arch")  # "--- wmt16 family ---" above is a header


def test_an_option_lists_only_what_it_changes(tmp_path: Path) -> None:
    option = tmp_path / "x.yaml"
    option.write_text("# python -m lorafa_repro.train trainer=x\nbatch_size: 32\nmax_steps: 7\n")
    sets = config_docs._sets(option, "trainer.", config_docs._schema_defaults())
    assert sets == "`trainer.max_steps`=`7`"  # batch_size 32 is the schema's default
