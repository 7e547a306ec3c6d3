"""omnimem's host-resident history (offload=true): pinned-chunk store growth, the per-head block
gather (torch fallback here; the Triton kernel under TRITON_INTERPRET when triton is installed),
exact agreement with the device-resident store, device/host byte reports and bad input."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fademem.memory import ChunkQuery, build_memory
from fademem.memory.host_store import HostFrames
from fademem.rope import WanRoPE
from fademem.wan.model import attention

pytestmark = pytest.mark.usefixtures("one_thread")

B, H, D, F = 2, 2, 16, 3
ROPE = WanRoPE(D)
ROOT = Path(__file__).resolve().parents[1]


def make(spec: str, tok: int):
    return build_memory(spec).bind(ROPE, tok)


def attend(view, q, k, v, start):
    pos = view.query_positions if view is not None else tuple(float(start + i) for i in range(F))
    qr, kr = ROPE.rotate_temporal(q, pos), ROPE.rotate_temporal(k, pos)
    if view is None:
        return attention(qr, kr, v)
    return attention(qr, torch.cat([view.k, kr], 1), torch.cat([view.v, v], 1), view.attn_mask)


def feed(specs: list[str], tok: int, chunks: int, dtype=torch.float32, seed: int = 0):
    """Drive several memories with identical chunks; yield (chunk, views, attention outputs, memories)."""
    g = torch.Generator().manual_seed(seed)
    mems = [make(s, tok) for s in specs]
    for c in range(chunks):
        q, k, v = (torch.randn(B, F * tok, H, D, generator=g).to(dtype) for _ in range(3))
        query = ChunkQuery(c * F, F, q)
        views = [m.view(query) for m in mems]
        outs = [attend(w, q, k, v, c * F) for w in views]
        yield c, views, outs, mems
        for m in mems:
            m.insert(k, v, c * F)


@pytest.mark.parametrize("knobs", ["grid=2x4,block_h=1,block_w=2,topk=3,window_chunks=2",
                                   "grid=2x4,block_h=2,block_w=2,topk=2,window_chunks=3,exclude_window=false",
                                   "grid=2x4,block_h=1,block_w=4,topk=5,window_chunks=1,query_group=3"])
@pytest.mark.parametrize("chunk", [1, 2, 0])
def test_host_store_gives_the_device_view_exactly(knobs, chunk):
    dev, host = f"omnimem:{knobs}", f"omnimem:{knobs},offload=true,host_chunk={chunk}"
    for dtype in (torch.float32, torch.bfloat16):
        selected = 0
        for c, (vd, vh), (od, oh), (md, mh) in feed([dev, host], 8, 6, dtype):
            if vd is None:
                assert vh is None
                continue
            assert str(vd.positions) == str(vh.positions) and vd.query_positions == vh.query_positions
            assert torch.equal(vd.k, vh.k) and torch.equal(vd.v, vh.v)
            assert (vd.attn_mask is None) == (vh.attn_mask is None)
            if vd.attn_mask is not None:
                assert torch.equal(vd.attn_mask, vh.attn_mask)
            assert torch.equal(od, oh)
            selected = max(selected, sum(p != p for p in vd.positions))  # nan = a retrieved block
        assert selected > 0  # the comparison covered retrieved blocks, not only the window
        assert mh.store.frames == 18 and len(mh.store.chunks) == (1 if chunk == 0 else -(-18 // chunk))


@pytest.mark.parametrize("knobs", ["block_h=1,block_w=2,window_chunks=2,host_chunk=2",
                                   "block_h=2,block_w=2,exclude_window=false,host_chunk=5"])
def test_host_store_with_all_blocks_equals_full_attention(knobs):
    spec = f"omnimem:grid=2x4,topk=1000,offload=true,{knobs}"
    for c, _, (out, ref), _ in feed([spec, "full"], 8, 5):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def frames_of(n: int, seed: int = 0, shape=(B, 6, H, D)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, *shape, generator=g)


def test_store_grows_by_whole_chunks_without_moving_frames():
    s = HostFrames(chunk_frames=4, pin=False)
    kv = frames_of(10)
    s.write(0, kv[0, 0], kv[0, 1])
    first = s.chunks[0].data_ptr()
    fb = kv[0].numel() * kv.element_size()
    assert s.frame_nbytes() == fb and s.nbytes() == 4 * fb and s.used_nbytes() == fb
    for f in range(1, 10):
        s.write(f, kv[f, 0], kv[f, 1])
    assert len(s.chunks) == 3 and s.chunks[0].data_ptr() == first  # old chunks never reallocated
    assert s.nbytes() == 12 * fb and s.used_nbytes() == 10 * fb and s.frames == 10
    k, v = s.read(3, 9, torch.device("cpu"))  # crosses two chunk boundaries
    assert torch.equal(k, kv[3:9, 0].transpose(0, 1).reshape(B, 36, H, D))
    assert torch.equal(v, kv[3:9, 1].transpose(0, 1).reshape(B, 36, H, D))
    k_all, v_all = s.tensors()
    assert torch.equal(k_all, kv[:, 0].transpose(0, 1)) and torch.equal(v_all, kv[:, 1].transpose(0, 1))
    s.write(5, kv[0, 0], kv[0, 1])  # overwriting a frame (prompt switch) does not grow anything
    assert s.nbytes() == 12 * fb and torch.equal(s.read(5, 6, torch.device("cpu"))[1], kv[0, 1].reshape(B, 6, H, D))


def test_automatic_chunk_size_fits_the_byte_target(monkeypatch):
    import fademem.memory.host_store as hs

    kv = frames_of(3)
    fb = kv[0].numel() * kv.element_size()
    monkeypatch.setattr(hs, "AUTO_CHUNK_BYTES", 2 * fb + 1)
    s = HostFrames(pin=False)
    for f in range(3):
        s.write(f, kv[f, 0], kv[f, 1])
    assert s.chunk_frames == 2 and len(s.chunks) == 2 and s.nbytes() == 4 * fb
    monkeypatch.setattr(hs, "AUTO_CHUNK_BYTES", 1)  # smaller than a frame: one frame per chunk
    s = HostFrames(pin=False)
    s.write(0, kv[0, 0], kv[0, 1])
    assert s.chunk_frames == 1
    monkeypatch.setattr(hs, "AUTO_CHUNK_BYTES", 2**30)  # small frames: capped frame count
    s = HostFrames(pin=False)
    s.write(0, kv[0, 0], kv[0, 1])
    assert s.chunk_frames == hs.AUTO_CHUNK_FRAMES and s.nbytes() == hs.AUTO_CHUNK_FRAMES * fb


def test_gather_picks_each_heads_own_blocks():
    s = HostFrames(chunk_frames=2, pin=False)
    kv = frames_of(5)  # 6 tokens per frame, blocks of 2 tokens -> 3 blocks per frame, 15 in all
    for f in range(5):
        s.write(f, kv[f, 0], kv[f, 1])
    idx = torch.tensor([[[0, 7, 14], [4, 5, 6]], [[13, 1, 8], [2, 2, 11]]])  # [B, H, K], any order, repeats
    out = torch.empty(2, B, 6, H, D)
    s.gather(idx, 2, out, "torch")
    for b in range(B):
        for h in range(H):
            for j, n in enumerate(idx[b, h].tolist()):
                f, blk = divmod(n, 3)
                for i in (0, 1):
                    assert torch.equal(out[i, b, 2 * j:2 * j + 2, h], kv[f, i, b, 2 * blk:2 * blk + 2, h])


def test_device_and_host_byte_reports():
    tok, topk = 8, 3
    knobs = "grid=2x4,block_h=1,block_w=2,topk=3,window_chunks=2"
    specs = [f"omnimem:{knobs}", f"omnimem:{knobs},offload=true,host_chunk=4,candidates=0",
             f"omnimem:{knobs},offload=true,host_chunk=4,index_segments=4,candidates=2"]
    log = []
    for c, _, _, (dev, flat, two) in feed(specs, tok, 7):
        log.append((flat.device_nbytes(), two.device_nbytes(), dev.device_nbytes()))  # views live
    fb = 2 * B * tok * H * D * 4
    parts, dev_parts = log[-1][0], log[-1][2]
    assert parts["history"] == 0 and parts["block_keys"] > 0 and parts["index"] == 0
    assert parts["gather_buffer"] == 2 * B * topk * 2 * H * D * 4  # topk blocks of 2 tokens per head, k and v
    # the ring of the previous chunk's frames (k, v) plus their rotated keys; its values are ring views
    assert parts["window"] == 2 * B * 3 * tok * H * D * 4 + B * 3 * tok * H * D * 4
    assert dev_parts["window"] == B * 3 * tok * H * D * 4  # device mode: the values are views of the history
    assert flat.nbytes() == sum(flat.device_nbytes().values()) and dev.nbytes() == sum(dev.device_nbytes().values())
    assert dev.device_nbytes()["history"] == dev.store.nbytes() > 0 and dev.host_nbytes() == 0
    assert log[-1][0]["block_keys"] > log[1][0]["block_keys"]  # flat scoring: block keys grow (reported)
    # two-level: block keys on the host, a fixed index (4 segments x (min, max)); nothing grows
    assert all(p[1] == log[2][1] for p in log[2:]) and log[-1][1]["block_keys"] == 0
    assert log[-1][1]["index"] == 2 * B * 4 * H * D * 4 and two.index.span == 8  # 21 frames, 4 segments of 8
    use = flat.host_usage()
    assert use == {"capacity_bytes": 6 * 4 * fb, "used_bytes": 21 * fb, "chunks": 6, "chunk_frames": 4,
                   "pinned": torch.cuda.is_available(), "block_key_bytes": 0}
    assert flat.host_nbytes() == use["capacity_bytes"]
    use2 = two.host_usage()
    assert use2["block_key_bytes"] == two.block_store.nbytes() > 0  # 4 blocks of float32 keys per frame
    assert use2["used_bytes"] == 21 * fb + 21 * B * 4 * H * D * 4


def test_state_round_trip_across_chunks():
    spec = "omnimem:grid=2x4,block_h=1,block_w=2,topk=2,offload=true,host_chunk=2"
    for c, _, _, (m,) in feed([spec], 8, 4):
        pass
    m.insert(*(torch.randn(B, F * 8, H, D) for _ in range(2)), 12)
    state = m.state_dict()
    m2 = make(spec, 8)
    m2.load_state_dict(state)
    assert m2.store.frames == 15 and len(m2.store.chunks) == 8
    q = torch.randn(B, F * 8, H, D)
    a, b = m.view(ChunkQuery(15, F, q)), m2.view(ChunkQuery(15, F, q))
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    bad = dict(state)
    del bad["host_store"]
    with pytest.raises(ValueError, match="host_store"):
        make(spec, 8).load_state_dict(bad)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="chunk_frames"):
        HostFrames(chunk_frames=-1)
    with pytest.raises(ValueError, match="gather"):
        build_memory("omnimem:offload=true,gather=cuda")
    with pytest.raises(ValueError, match="offload"):
        build_memory("omnimem:gather=triton")
    with pytest.raises(ValueError, match="host_chunk"):
        build_memory("omnimem:offload=true,host_chunk=-2")
    s = HostFrames(chunk_frames=2, pin=False)
    kv = frames_of(2)
    s.write(0, kv[0, 0], kv[0, 1])
    with pytest.raises(ValueError, match="shape"):
        s.write(1, kv[1, 0, :, :3], kv[1, 1, :, :3])
    with pytest.raises(ValueError, match="float64"):
        s.write(1, kv[1, 0].double(), kv[1, 1].double())
    with pytest.raises(ValueError, match="outside"):
        s.read(0, 2, torch.device("cpu"))
    idx = torch.zeros(B, H, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="idx"):
        s.gather(idx[:, :1], 2, torch.empty(2, B, 4, H, D))
    with pytest.raises(ValueError, match="out"):
        s.gather(idx, 2, torch.empty(2, B, 5, H, D))
    with pytest.raises(ValueError, match="block_tokens"):
        s.gather(idx, 4, torch.empty(2, B, 8, H, D))
    with pytest.raises(ValueError, match="method"):
        s.gather(idx, 2, torch.empty(2, B, 4, H, D), "cuda")
    m = make("omnimem:grid=2x4,block_h=1,block_w=2,offload=true", 8)
    m.insert(torch.randn(B, 8, H, D), torch.randn(B, 8, H, D), 0)
    with pytest.raises(ValueError, match="does not match"):
        m.insert(torch.randn(B, 8, H + 1, D), torch.randn(B, 8, H + 1, D), 1)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_matches_the_device_store_under_the_interpreter():
    # TRITON_INTERPRET must be set before the kernels are defined: a fresh interpreter runs the check.
    code = textwrap.dedent("""
        import torch
        from fademem.memory import ChunkQuery, build_memory
        from fademem.rope import WanRoPE
        rope = WanRoPE(16)
        g = torch.Generator().manual_seed(0)
        dev = build_memory("omnimem:grid=2x4,block_h=1,block_w=2,topk=3,window_chunks=2").bind(rope, 8)
        tri = build_memory("omnimem:grid=2x4,block_h=1,block_w=2,topk=3,window_chunks=2,offload=true,"
                           "host_chunk=2,gather=triton").bind(rope, 8)
        two = "omnimem:grid=2x4,block_h=1,block_w=2,topk=3,window_chunks=2,candidates=1,index_segments=4"
        dev2 = build_memory(two).bind(rope, 8)  # two-level: block keys fetched per head from the host
        tri2 = build_memory(two + ",offload=true,host_chunk=2,gather=triton").bind(rope, 8)
        pairs = [(dev, tri), (dev2, tri2)]
        for c in range(6):
            q, k, v = (torch.randn(2, 24, 2, 16, generator=g).to(torch.bfloat16) for _ in range(3))
            for x, y in pairs:
                a, b = x.view(ChunkQuery(3 * c, 3, q)), y.view(ChunkQuery(3 * c, 3, q))
                assert (a is None) == (b is None)
                if a is not None:
                    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v), c
                x.insert(k, v, 3 * c)
                y.insert(k, v, 3 * c)
        assert len(tri.store.chunks) == 9 and tri.store._recorded == 8  # recorded lazily, at the gathers
        assert tri2.index.span == 8 and tri2.block_store._recorded == 1  # the two-level gather ran
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_gpu_check_script_runs_on_the_cpu(tmp_path, benchmark_script):
    mod = benchmark_script("omnimem_offload_check")
    out = tmp_path / "check.json"
    rep = mod.main(["--device", "cpu", "--tiny", "--chunks", "2", "--warmup", "1", "--modes", "device,host",
                    "--out", str(out)])
    assert out.exists() and all(r["torch_equal"] for r in rep["gather_check"])
    assert rep["view_check"]["equal"] and rep["view_check"]["views_compared"] >= 6
    runs = rep["real_size"]["runs"]
    assert runs["device"]["error"] is None and runs["host"]["error"] is None, runs
    host = runs["host"]["chunks"][-1]
    assert host["host_capacity_bytes"] >= host["host_used_bytes"] > 0 and host["device_history_bytes"] == 0
    assert runs["device"]["chunks"][-1]["device_history_bytes"] > 0


def test_pinned_chunks_are_prepared_ahead_by_the_worker(monkeypatch):
    import fademem.memory.host_store as hs

    s = HostFrames(chunk_frames=2, pin=False)
    s.pin = True  # take the pinned path's bookkeeping; the allocation itself stays unpinned on the CPU
    made = []
    monkeypatch.setattr(s, "_alloc_chunk", lambda: made.append(1) or torch.empty(2, 2, B, 6, H, D))
    kv = frames_of(5)
    for f in range(5):
        s.write(f, kv[f, 0], kv[f, 1])
    assert len(s.chunks) == 3 and s._spare is not None  # a spare waits for the fourth chunk
    s._spare.result()
    assert len(made) == 4
    k, v = s.read(0, 5, torch.device("cpu"))
    assert torch.equal(v, kv[:, 1].transpose(0, 1).reshape(B, 30, H, D))
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "pinned_use_cuda_host_register:False")
    assert hs._fast_pinning.__wrapped__() is None  # the user's pinned settings win
