"""Exact resume with OmniMem's offloaded history (issue 16): the host store (``memory/host_store.py``:
the frames, the block keys of two-level retrieval) and the segment index travel in the state file as
host tensors, and a run resumed from the file equals the uninterrupted one bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_resume import FRAMES, _collect, _resumed, _wan_pipe

from fademem.pipeline.state import load_state, save_state
from fademem.wan.model import WanConfig

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = "omnimem:topk=2,block_h=1,block_w=3,query_group=3,window_chunks=2,grid=2x3,offload=true,host_chunk=2"


@pytest.mark.parametrize("spec", [BASE, BASE + ",candidates=0"])  # two-level (host block keys + index), flat
def test_offloaded_history_resumes_exactly(spec, tmp_path):
    shape = (WanConfig.tiny().in_dim, 4, 6)
    switches = [(12, "a dog")]
    want = _collect(_wan_pipe().generate("a cat", FRAMES, memory=spec, seed=7, switches=switches,
                                         latent_shape=shape, progress=False))
    got = _resumed(_wan_pipe, "a cat", spec, shape, 3, switches, tmp_path)
    assert torch.equal(got[0], want[0])


def test_the_state_file_holds_the_host_store(tmp_path):
    spec = BASE
    pipe = _wan_pipe()
    s = pipe.session("a cat", FRAMES, memory=spec, seed=7, latent_shape=(WanConfig.tiny().in_dim, 4, 6))
    for _ in range(3):
        s.step()
    layer = s.stack[0]
    assert layer.offload and layer.store.frames == 9 and len(layer.store.chunks) == 5  # 2 frames per host chunk
    state = load_state(save_state(tmp_path / "run.state", s.state_dict()))
    saved = state["memory"]["layers"][0]
    k, v = saved["host_store"]
    assert k.device.type == "cpu" and k.shape[1] == 9  # [B, frames, tokens, heads, dim]
    want_k, want_v = layer.store.tensors()
    assert torch.equal(k, want_k) and torch.equal(v, want_v)
    assert saved["host_blocks"] is not None and saved["index"] is not None  # two-level: block keys, segment bounds
