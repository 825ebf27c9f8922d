"""rlhfkit against TRL, side by side (issue 13 §3): ``python -m benchmarks.run`` (or ``benchmarks/run.py``).

Never imported by the ``rlhfkit`` package; TRL comes from the ``bench`` extra.

- :mod:`benchmarks.workload`: the shared work (tiny Llama, data files, the reward function), made once in a cache folder;
- :mod:`benchmarks.side_rlhfkit`, :mod:`benchmarks.side_trl`: one algorithm on one side;
- :mod:`benchmarks.child`: the fresh subprocess that runs one side and reports its times, peak RSS and step-1 loss;
- :mod:`benchmarks.gemm_peak`: the fp32 GEMM peak that model FLOPs utilisation is measured against;
- :mod:`benchmarks.report`: medians, ratios, MFU and the markdown table;
- :mod:`benchmarks.run`: the command line (interleaved repeats A B A B …).
"""
