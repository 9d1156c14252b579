"""Memory measurement.

  peak.py   peak memory of a training run (CUDA allocator counters, or process RSS on CPU)
  saved.py  bytes saved for backward, by layer and kind (issue #3)
  probe.py  one training step's peak memory: cuda / simulate / analytic backends (issue #4)
"""
