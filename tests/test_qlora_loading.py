"""QLoRA training peaks (issue #12): the model is quantized before it moves to the device, and the loading
peak is reported apart from the training steps' peak."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from lorafa_repro.memory.peak import PeakMemory


class FakeCuda:
    """torch.cuda's allocator counters, driven by hand."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    def alloc(self, n: int) -> None:
        self.now += n
        self.peak = max(self.peak, self.now)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def reset(*_: object) -> None:
            self.peak = self.now

        for name, fn in {"synchronize": lambda *a: None, "empty_cache": lambda *a: None,
                         "reset_peak_memory_stats": reset, "max_memory_allocated": lambda *a: self.peak,
                         "max_memory_reserved": lambda *a: self.peak + 1, "memory_allocated": lambda *a: self.now,
                         "get_device_name": lambda *a: "FakeGPU"}.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_loading_peak_is_reported_apart_from_the_training_peak(monkeypatch) -> None:
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    mem = PeakMemory(torch.device("cuda"))
    mem.reset()
    cuda.alloc(1000)       # fp32 weights
    cuda.alloc(-750)       # quantized: 250 left
    mem.end_loading()
    cuda.alloc(300)        # step 1: activations
    cuda.alloc(-300)
    first = mem.interval()
    cuda.alloc(200)        # step 2
    cuda.alloc(-200)
    out = mem.summary()
    assert first["peak_allocated_bytes"] == 550  # the first logged interval starts after loading
    assert out["peak_allocated_bytes"] == 550 and out["load_peak_allocated_bytes"] == 1000
    assert out["marks_allocated_bytes"]["weights_loaded"] == 250


@pytest.mark.parametrize("method,quantized_before_move", [("qlora", True), ("lora", False)])
def test_4bit_methods_quantize_before_moving_to_the_device(method: str, quantized_before_move: bool,
                                                           synthetic_glue: Path, tmp_path: Path, monkeypatch) -> None:
    """The order in run(): for a 4-bit method the method (quantization) is applied before the model moves to
    the device; for the others the model moves first, as before."""
    import lorafa_repro.run as R

    events: list[str] = []
    real_apply, real_to = R.apply_method, nn.Module.to

    def apply_spy(*a, **k):
        events.append("apply")
        return real_apply(*a, **k)

    def to_spy(self, *a, **k):
        if not events or events[-1] != "to":
            events.append("to")
        return real_to(self, *a, **k)

    monkeypatch.setattr(R, "apply_method", apply_spy)
    monkeypatch.setattr(nn.Module, "to", to_spy)
    cfg = compose_cfg(["model=tiny_roberta", "trainer=tiny", "task=glue/sst2", "task.max_train_samples=8",
                       "trainer.max_steps=1", "method.rank=4", f"method={method}", f"task.data_dir={synthetic_glue}"])
    result = R.run(cfg, tmp_path)
    assert result["status"] == "success"
    first_to, apply = events.index("to"), events.index("apply")
    assert (apply < first_to) == quantized_before_move, events
    assert "load_peak_rss_bytes" in result["memory"]
