"""FSDP2 (configs/accelerate/fsdp2.yaml) needs a GPU here: accelerate 1.16 turns FSDP on only for GPU-family
process groups (its AcceleratorState sets DistributedType.FSDP for MULTI_GPU / XPU / NPU / ... and leaves a
gloo CPU group as MULTI_CPU, i.e. DDP), so on a CPU machine the FSDP settings are ignored. This test shows
exactly that, so it fails the day accelerate starts sharding on CPU and the FSDP2 check can move here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

PROBE = """
import sys
from rlhfkit.train.run import make_accelerator
accelerator = make_accelerator("fp32")
with open(f"{sys.argv[1]}/type-{accelerator.process_index}.txt", "w") as handle:
    handle.write(str(accelerator.distributed_type))
"""


def test_accelerate_keeps_fsdp_off_on_a_cpu_process_group(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: FSDP2 applies there and is checked with fsdp2.yaml, not here")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    types = [(tmp_path / f"type-{rank}.txt").read_text() for rank in range(2)]
    assert types == ["DistributedType.MULTI_CPU"] * 2  # data parallel, not sharded
