"""Memory measurement.

  peak.py      peak memory of a training run (CUDA allocator counters, or process RSS on CPU)
  saved.py     bytes saved for backward, by layer and kind, deduplicated by storage (issue #3)
  probe.py     one training step's peak memory; backends cuda | simulate | analytic (+ cpu for checks); CLI
  simulate.py  the simulate backend: fake tensors + MemTracker, depth extrapolation, NF4 correction
  analytic.py  the paper's formulas (sections 2.2, 3.1) over the real layer shapes and dtypes
  table4.py    the Table 4 runner (`make reproduce-table4`)
"""
