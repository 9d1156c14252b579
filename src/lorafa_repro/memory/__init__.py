"""Memory measurement.

  peak.py       peak memory of a training run (CUDA allocator counters, or process RSS on CPU)
  saved.py      bytes saved for backward, by layer and kind, deduplicated by storage (issue #3)
  step.py       the measured step (model, method, batch, optimizer, forward/backward/step): every backend uses it
  semantics.py  whose saved tensors the step keeps: CUDA's kernels (default) or the CPU's (dropout, SDPA)
  cuda.py       backend cuda: a real step on the GPU, allocator counters per phase
  cpu.py        backend cpu (validation): a real step on CPU tensors, the CPU allocator's events
  simulate.py   backend simulate: fake tensors + MemTracker, depth extrapolation, NF4 correction
  analytic.py   backend analytic: the paper's formulas (sections 2.2, 3.1) over the real layer shapes and dtypes
  probe.py      dispatch to a backend, result.json, CLI (imports the backends; none imports it)
  table4.py     the Table 4 runner (`make reproduce-table4`)

Imports go one way: step <- {cuda, cpu, simulate, analytic} <- probe <- table4.
"""
