"""Each private API of a dependency the package relies on, checked to still do what the package
uses it for: an upgrade that moves one fails here, by name, before it fails (or silently slows)
a run. Why each is used, and what it saves, is in docs/performance.md "Private APIs"."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eeg2im_scale.data import format as format_module
from eeg2im_scale.data.loader import _empty_shared_flags
from eeg2im_scale.train import distributed


def test_torchvision_decode_op_decodes_png_as_pil_does():
    """``torch.ops.image.decode_image``: torchvision's decoder without its deprecation-warning wrapper."""
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    decode = format_module.torchvision_decoder()
    assert decode is not None, "torch.ops.image.decode_image is gone: every image now decodes through PIL"
    image = decode(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), pixels)


def test_untyped_storage_new_shared_gives_shared_memory():
    """``torch.UntypedStorage._new_shared``: the loader's reusable shared-memory batch buffers."""
    storage = torch.UntypedStorage._new_shared(64)
    assert storage.is_shared() and storage.nbytes() == 64
    flags = _empty_shared_flags(2, 3)
    assert flags.shape == (2, 3) and flags.untyped_storage().is_shared() and int(flags.sum()) == 0


def test_deepspeed_compatible_ops_still_gates_the_shm_build():
    """``deepspeed.ops.__compatible_ops__``: marking the inference-only shared-memory all-reduce
    incompatible must keep ``build_shm_op`` from compiling it (~45 s of g++ at every first start)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None:
        pytest.skip("this accelerator has no shared-memory all-reduce to skip")
    assert builder.NAME == "deepspeed_shm_comm", f"the op is now named {builder.NAME!r}"
    before = dict(deepspeed.ops.__compatible_ops__)
    try:
        distributed._skip_inference_allreduce_build()
        # the submodule, not the ``torch`` name deepspeed.comm also binds
        assert importlib.import_module("deepspeed.comm.torch").build_shm_op() is None
    finally:
        deepspeed.ops.__compatible_ops__.clear()
        deepspeed.ops.__compatible_ops__.update(before)


def test_c10d_world_lists_the_process_groups(tmp_path):
    """``dist.distributed_c10d._world.pg_map``: the only listing of the groups DeepSpeed forms, so
    ``bound_every_group`` can give each the collective timeout. In a fresh process: earlier tests
    may have left a process group in this one."""
    code = f"""
import torch.distributed as dist
from eeg2im_scale.train import distributed
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
extra = dist.new_group([0])
groups = list(dist.distributed_c10d._world.pg_map)
assert dist.group.WORLD in groups and extra in groups, groups
distributed.bound_every_group(7)
dist.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
