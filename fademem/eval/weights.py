"""The weight files each VBench dimension needs, where they are published, and where we look for them.

Nothing is downloaded: a scorer reads local files only. ``find_weights(weights_dir, dimensions)``
returns the path of every file the dimensions need, or raises ``MissingWeights`` naming each missing
file, the places looked at and where it is published. A file is found either directly in
``weights_dir`` or at VBench's own layout below it, so ``--weights-dir ~/.cache/vbench`` (VBench's
``VBENCH_CACHE_DIR``) works as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DIMENSIONS", "WEIGHTS", "MissingWeights", "WeightFile", "find_weights", "needed_files"]

# FadeMem Table 1's order
DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
              "aesthetic_quality", "imaging_quality")


@dataclass(frozen=True)
class WeightFile:
    key: str
    name: str              # the published file name
    vbench_path: str       # where VBench keeps it below its cache dir
    published: str         # where it is published
    fmt: str               # what the file holds

    def candidates(self, root: Path) -> list[Path]:
        return [root / self.name, root / self.vbench_path]


WEIGHTS = {
    "dino": WeightFile("dino", "dino_vitbase16_pretrain.pth", "dino_model/dino_vitbase16_pretrain.pth",
                       "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                       "torch state dict of DINO's ViT-B/16 backbone (facebookresearch/dino key names)"),
    "clip_b32": WeightFile("clip_b32", "ViT-B-32.pt", "clip_model/ViT-B-32.pt",
                           "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be2"
                           "19cc2a73407c4526f58eba950af/ViT-B-32.pt",
                           "OpenAI CLIP TorchScript archive (or its state dict)"),
    "clip_l14": WeightFile("clip_l14", "ViT-L-14.pt", "clip_model/ViT-L-14.pt",
                           "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd8"
                           "8be6f7c2e0eca1737a03836/ViT-L-14.pt",
                           "OpenAI CLIP TorchScript archive (or its state dict)"),
    "aesthetic": WeightFile("aesthetic", "sa_0_4_vit_l_14_linear.pth",
                            "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
                            "https://github.com/LAION-AI/aesthetic-predictor (sa_0_4_vit_l_14_linear.pth)",
                            "torch state dict of nn.Linear(768, 1): weight, bias"),
    "raft": WeightFile("raft", "raft-things.pth", "raft_model/models/raft-things.pth",
                       "https://github.com/princeton-vl/RAFT (models.zip: models/raft-things.pth)",
                       "torch state dict of the original RAFT (module.-prefixed key names)"),
    "amt": WeightFile("amt", "amt-s.pth", "amt_model/amt-s.pth",
                      "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth",
                      "torch checkpoint {'state_dict': ...} of AMT-S (MCG-NKU/AMT key names)"),
    "musiq": WeightFile("musiq", "musiq_spaq_ckpt-358bb6af.pth", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
                        "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
                        "musiq_spaq_ckpt-358bb6af.pth", "torch state dict of pyiqa's MUSIQ trained on SPAQ"),
}

_NEEDS = {
    "subject_consistency": ("dino",),
    "background_consistency": ("clip_b32",),
    "motion_smoothness": ("amt",),
    "dynamic_degree": ("raft",),
    "aesthetic_quality": ("clip_l14", "aesthetic"),
    "imaging_quality": ("musiq",),
}


class MissingWeights(FileNotFoundError):
    """Weight files are missing; ``missing`` lists the ``WeightFile`` entries, the message says where
    each was looked for and where it is published."""

    def __init__(self, root: Path, missing: list[WeightFile], dimensions: list[str]):
        self.missing = missing
        lines = [f"missing weight file(s) in {root} (nothing is downloaded; place the published files there):"]
        for w in missing:
            dims = ", ".join(d for d in dimensions if w.key in _NEEDS[d])
            lines.append(f"  {w.name}  [{dims}]  looked for {w.candidates(root)[0]} and {w.candidates(root)[1]}; "
                         f"published at {w.published}")
        super().__init__("\n".join(lines))


def needed_files(dimensions) -> list[WeightFile]:
    keys: list[str] = []
    for d in dimensions:
        if d not in _NEEDS:
            raise ValueError(f"unknown dimension {d!r}; known: {', '.join(DIMENSIONS)}")
        keys += [k for k in _NEEDS[d] if k not in keys]
    return [WEIGHTS[k] for k in keys]


def find_weights(weights_dir, dimensions=DIMENSIONS) -> dict[str, Path]:
    """``{key: path}`` for every file ``dimensions`` need, or ``MissingWeights``."""
    root = Path(weights_dir).expanduser()
    found, missing = {}, []
    for w in needed_files(dimensions):
        hit = next((p for p in w.candidates(root) if p.is_file()), None)
        if hit is None:
            missing.append(w)
        else:
            found[w.key] = hit
    if missing:
        raise MissingWeights(root, missing, list(dimensions))
    return found
