"""VBench-Long evaluation as the long-video papers report it (``fademem eval``).

* ``weights``    the weight files each dimension needs, where they are published, where we look
* ``extractors`` DINO (timm), CLIP + LAION head (open-clip), MUSIQ (pyiqa), RAFT (torchvision) from local files
* ``amt``        AMT-S (motion smoothness), written from its published architecture
* ``dimensions`` VBench's per-clip computations of the six dimensions of FadeMem's Table 1
* ``protocol``   VBench-Long's clips, in-clip / clip-to-clip scores, fusion, pooling, the paper's "Avg."
* ``scenes``     PySceneDetect's scene cuts for VBench-Long's optional scene-aware splitting (``--scene-split``)
* ``scorer``     ``Scorer``: a video file (or frames) -> ``VideoScore``
* ``jobs`` ``store`` ``generators`` ``runner``  ``fademem eval run``: prompts x specs x seeds, torchrun shards,
  the resumable SQLite store
* ``report``     the paper's table (Markdown) and plots

Nothing is downloaded: weights are read from a local folder (``MissingWeights`` names each missing file).
The libraries come with ``pip install 'fademem[eval]'`` (PySceneDetect, for ``--scene-split``, with
``fademem[eval-scenes]``).
"""

from fademem.eval.protocol import VideoScore, aggregate, paper_average, split_clips, split_scene_clips
from fademem.eval.weights import DIMENSIONS, MissingWeights, find_weights

__all__ = ["DIMENSIONS", "MissingWeights", "Scorer", "VideoScore", "aggregate", "find_weights", "paper_average",
           "split_clips", "split_scene_clips"]


def __getattr__(name: str):
    if name == "Scorer":
        from fademem.eval.scorer import Scorer

        return Scorer
    raise AttributeError(f"module 'fademem.eval' has no attribute {name!r}")
