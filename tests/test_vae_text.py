"""The Wan2.1 adapters (UMT5 text encoder, streaming Wan VAE decoder) and the mp4 writer.

Everything is tiny, random and built locally: no downloads. ``make_wan_dir`` writes a tiny Wan2.1
Diffusers directory (text_encoder/, tokenizer/, vae/) that the CLI test reuses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

WORDS = ["<pad>", "</s>", "<unk>"] + "a cat dog runs on the beach red ball jumps over fence in snow".split()
Z_DIM = 4
TEXT_DIM = 16

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return fast


def make_umt5(path=None, seed=0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(WORDS), d_model=TEXT_DIM, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16,
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = UMT5EncoderModel(cfg).eval()
    if path is not None:
        model.save_pretrained(str(path))
    return model


def make_vae(path=None, seed=0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=Z_DIM, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.1 * i - 0.2 for i in range(Z_DIM)],
                           latents_std=[1.0 + 0.25 * i for i in range(Z_DIM)]).eval()
    if path is not None:
        vae.save_pretrained(str(path))
    return vae


def make_wan_dir(root):
    """A tiny Wan2.1 Diffusers directory: text_encoder/ (UMT5), tokenizer/, vae/ (AutoencoderKLWan)."""
    make_tokenizer(root / "tokenizer")
    make_umt5(root / "text_encoder")
    make_vae(root / "vae")
    return root


# -- VAE ---------------------------------------------------------------------------------------
def test_streaming_decode_equals_one_shot():
    from fademem.wan.vae import WanVAEDecoder, to_uint8

    vae = make_vae()
    dec = WanVAEDecoder(vae)
    torch.manual_seed(1)
    lat = torch.randn(2, Z_DIM, 7, 4, 6)  # normalised DiT latents
    # diffusers' Wan pipeline: latents / (1 / std) + mean, then vae.decode (clamped to [-1, 1])
    mean = torch.tensor(vae.config.latents_mean).view(1, Z_DIM, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, Z_DIM, 1, 1, 1)
    with torch.no_grad():
        ref = vae.decode(lat / (1.0 / std) + mean).sample
    assert ref.shape == (2, 3, 4 * 7 - 3, 32, 48)

    dec.reset()
    parts = [dec.decode_float(lat[:, :, s:e]) for s, e in ((0, 3), (3, 6), (6, 7))]
    assert [p.shape[2] for p in parts] == [9, 12, 4]
    out = torch.cat(parts, dim=2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert dec.latent_frames == 7 and WanVAEDecoder.video_frames(7) == 25

    # a second video after reset() is decoded afresh; uint8 frames [B, T, H, W, 3]
    dec.reset()
    frames = torch.cat([dec.decode(lat[:, :, :3]), dec.decode(lat[:, :, 3:])], dim=1)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 25, 32, 48, 3)
    assert (frames.int() - to_uint8(ref).int()).abs().max() <= 1  # rounding at a .5 boundary at most

    with pytest.raises(ValueError, match="latents"):
        dec.decode(torch.randn(1, Z_DIM + 1, 3, 4, 6))


@pytest.mark.parametrize("k", [1, 2])
def test_stream_state_round_trip(tmp_path, k):
    """Chunks 0..k decoded, ``stream_state()`` through a state file, a fresh decoder of the same weights
    ``load_stream_state()``: the rest of the video equals one uninterrupted streaming decode."""
    from fademem.pipeline.state import load_state, save_state
    from fademem.wan.vae import WanVAEDecoder

    torch.manual_seed(2)
    lat = torch.randn(1, Z_DIM, 9, 4, 6)
    chunks = [lat[:, :, s:s + 3] for s in range(0, 9, 3)]
    whole = WanVAEDecoder(make_vae())
    want = torch.cat([whole.decode_float(c) for c in chunks], dim=2)

    first = WanVAEDecoder(make_vae())
    head = [first.decode_float(c) for c in chunks[:k]]
    path = save_state(tmp_path / "vae.state", {"decoder": first.stream_state()})
    head.append(first.decode_float(chunks[k]))  # decoding on does not change what was saved
    second = WanVAEDecoder(make_vae())
    second.load_stream_state(load_state(path)["decoder"])
    assert second.latent_frames == 3 * k
    got = torch.cat(head[:k] + [second.decode_float(c) for c in chunks[k:]], dim=2)
    assert got.shape == want.shape == (1, 3, 4 * 9 - 3, 32, 48)
    assert torch.equal(got, want)
    assert torch.equal(head[k], want[:, :, got.shape[2] - 4 * (9 - 3 * k): got.shape[2] - 4 * (6 - 3 * k)])
    with pytest.raises(ValueError, match="cache entries"):
        second.load_stream_state({"feat_cache": [None], "first": False, "latent_frames": 3})


def test_vae_from_pretrained(tmp_path):
    from fademem.wan.vae import WanVAEDecoder

    make_vae(tmp_path / "wan" / "vae")
    dec = WanVAEDecoder.from_pretrained(tmp_path / "wan")
    assert dec.z_dim == Z_DIM and dec.fps == 16
    assert WanVAEDecoder.from_pretrained(tmp_path / "wan" / "vae").z_dim == Z_DIM
    with pytest.raises(FileNotFoundError, match="not found"):
        WanVAEDecoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vae"):
        WanVAEDecoder.from_pretrained(tmp_path / "empty")


# -- text ----------------------------------------------------------------------------------------
def test_umt5_zeroes_padding_and_returns_512_positions(tmp_path):
    from fademem.wan.text import UMT5TextEncoder, clean_prompt

    make_wan_dir_text = tmp_path / "wan"
    make_tokenizer(make_wan_dir_text / "tokenizer")
    model = make_umt5(make_wan_dir_text / "text_encoder")
    enc = UMT5TextEncoder.from_pretrained(make_wan_dir_text)
    assert enc.text_dim == TEXT_DIM and enc.max_length == 512
    prompts = ["a cat", "  a red  dog\n runs on the beach "]
    out = enc.encode(prompts)
    assert out.shape == (2, 512, TEXT_DIM) and out.dtype == torch.float32

    ids, mask = enc.tokenize(prompts)
    lengths = mask.sum(1).tolist()
    assert lengths == [3, 8]  # words + </s>; whitespace collapsed by the cleaning
    for b, n in enumerate(lengths):
        assert out[b, n:].abs().max() == 0  # padding positions zeroed
        assert out[b, :n].abs().min() > 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[0, :3], ref[0, :3])
    assert ref[0, 3:].abs().max() > 0  # without the mask multiply, padding would not be zero
    assert clean_prompt("a &amp;amp; b\t\n c ") == "a & b c"


def test_umt5_missing_files(tmp_path):
    from fademem.wan.text import UMT5TextEncoder

    with pytest.raises(FileNotFoundError, match="not found"):
        UMT5TextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "wan" / "text_encoder").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        UMT5TextEncoder.from_pretrained(tmp_path / "wan")
    make_umt5(tmp_path / "wan" / "text_encoder")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        UMT5TextEncoder.from_pretrained(tmp_path / "wan")


# -- mp4 writer ------------------------------------------------------------------------------------
def test_video_writer_roundtrip(tmp_path):
    from fademem.pipeline.video_io import VideoWriter, iter_video_frames, read_video_info

    rng = np.random.default_rng(0)
    path = tmp_path / "v.mp4"
    with VideoWriter(path, fps=16) as w:
        w.write(np.full((24, 32, 3), 128, np.uint8))  # one frame
        w.write(torch.from_numpy(rng.integers(0, 255, (8, 24, 32, 3), dtype=np.uint8)))  # a batch (torch)
        with pytest.raises(ValueError, match="size"):
            w.write(np.zeros((2, 16, 16, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            w.write(np.zeros((1, 24, 32, 3), np.float32))
    assert w.frames_written == 9
    info = read_video_info(path)
    assert info == (9, 16.0, (24, 32)) and info.frames == 9
    first = next(iter_video_frames(path))
    assert abs(float(first.mean()) - 128 / 255) < 0.02

    odd = tmp_path / "odd.mp4"
    with VideoWriter(odd, fps=8) as w:
        w.write(np.zeros((3, 17, 31, 3), np.uint8))
    assert read_video_info(odd) == (3, 8.0, (18, 32))  # padded to even for yuv420p
    with pytest.raises(ValueError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "x.mp4")
