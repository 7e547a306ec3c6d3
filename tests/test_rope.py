"""Wan 3D RoPE from the angle formula: inverse, relativity at fractional positions, Wan's table."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fademem.rope import WanRoPE, band_pairs

D = 128  # Wan2.1 head size: 64 pairs split 22 / 21 / 21


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_band_split_matches_wan():
    assert band_pairs(128) == (22, 21, 21)
    for bad in (0, 7, 4):
        with pytest.raises(ValueError):
            band_pairs(bad)


@settings(max_examples=30, deadline=None)
@given(pos=st.lists(st.floats(-500, 5000, allow_nan=False), min_size=1, max_size=4))
def test_rotate_then_unrotate_is_identity(pos):
    rope = WanRoPE(D)
    x = rand(1, 3 * len(pos), 2, D)
    y = rope.rotate_temporal(x, pos)
    back = rope.rotate_temporal(y, pos, inverse=True)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope.rotate_spatial(rope.rotate_spatial(x, 1, 3), 1, 3, inverse=True), x,
                               atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0, 300), q=st.floats(0, 300), shift=st.floats(-100, 100))
def test_scores_depend_only_on_offset(p, q, shift):
    """q.k at positions (p, p') equals q.k at (p + c, p' + c), also for fractional positions."""
    rope = WanRoPE(D)
    qv, kv = rand(1, 1, 1, D, seed=1), rand(1, 1, 1, D, seed=2)

    def score(a, b):
        return (rope.rotate_temporal(qv, [a]) * rope.rotate_temporal(kv, [b])).sum()

    torch.testing.assert_close(score(p, q), score(p + shift, q + shift), atol=2e-4, rtol=1e-5)


def wan_apply(x: torch.Tensor, table: torch.Tensor, f: int, h: int, w: int, t0: int = 0) -> torch.Tensor:
    """Wan's rope_apply (complex multiply by the integer table) for an f x h x w grid."""
    c = D // 2
    t_, h_, w_ = band_pairs(D)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], c, 2))
    ft, fh, fw = table[:, :t_], table[:, t_:t_ + h_], table[:, t_ + h_:]
    freqs = torch.cat([ft[t0:t0 + f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, c)
    return torch.view_as_real(xc * freqs).flatten(-2)


@pytest.mark.parametrize("t0", [0, 7, 500])
def test_agrees_with_wan_integer_table(t0):
    rope = WanRoPE(D)
    f, h, w = 3, 2, 4
    x = rand(1, f * h * w, 2, D)
    ours = rope.rotate(x, [float(t0 + i) for i in range(f)], h, w)
    ref = wan_apply(x[0], rope.table(1024), f, h, w, t0)[None]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_spatial_rotation_matches_table_bands():
    rope = WanRoPE(D)
    h, w = 3, 5
    x = rand(1, 2 * h * w, 1, D)
    ref = wan_apply(x[0], rope.table(64), 2, h, w, 0)[None]
    # frame 0 has temporal phase 0, so the spatial rotation alone must match Wan there
    ours = rope.rotate_spatial(x, h, w)
    torch.testing.assert_close(ours[:, :h * w], ref[:, :h * w], atol=1e-5, rtol=1e-5)
    # the temporal band is untouched by the spatial rotation
    t_pairs = band_pairs(D)[0]
    torch.testing.assert_close(ours[..., :2 * t_pairs], x[..., :2 * t_pairs])


def test_fractional_position_interpolates_angle():
    """Position 2.5 rotates by exactly half-way between the angles of 2 and 3."""
    rope = WanRoPE(D)
    cos, sin = rope.temporal_cos_sin([2.0, 2.5, 3.0], "cpu")
    ang = torch.atan2(sin, cos)
    mid = torch.atan2(torch.sin((ang[0] + ang[2]) / 2), torch.cos((ang[0] + ang[2]) / 2))
    # compare on the pairs whose angles at 2 and 3 do not wrap (low frequencies)
    ok = (ang[2] - ang[0]).abs() < 3.0
    torch.testing.assert_close(ang[1][ok], mid[ok], atol=1e-5, rtol=0)


def test_bad_shapes():
    rope = WanRoPE(D)
    with pytest.raises(ValueError, match="expected"):
        rope.rotate_temporal(torch.zeros(2, 3, D), [0.0])
    with pytest.raises(ValueError, match="cannot be split"):
        rope.rotate_temporal(torch.zeros(1, 5, 1, D), [0.0, 1.0])
    with pytest.raises(ValueError, match="whole frames"):
        rope.rotate_spatial(torch.zeros(1, 5, 1, D), 2, 2)
