"""A video file that grows in committed segments and is complete and playable after every commit
(``fademem generate --state``: the file written so far is a finished mp4 at each save and stop).

Frames go to a part file next to the video (``<stem>.part<ext>``); ``commit()`` finishes it and
appends it to the video by remuxing (packets copied with shifted timestamps, no re-encoding) into a
temporary file that then replaces the video. A resumed run opens the video with the frame count
its state recorded and keeps appending. Each segment is its own H.264 stream from the same encoder
settings, so the frames equal those of one uninterrupted encode up to the codec's loss (exactly
with ``crf=0``, lossless).
"""

from __future__ import annotations

import os
from fractions import Fraction

from fademem.pipeline.video_io import VideoWriter, count_frames


class SegmentedVideo:
    def __init__(self, path, fps: float, crf: int = 18, frames: int = 0):
        self.path = os.fspath(path)
        stem, ext = os.path.splitext(self.path)
        self.part = f"{stem}.part{ext}"
        self.tmp = f"{stem}.tmp{ext}"
        self.fps, self.crf = fps, crf
        self.frames = int(frames)  # frames in the committed file
        if self.frames:
            have = count_frames(self.path) if os.path.isfile(self.path) else 0
            if have != self.frames:
                raise ValueError(f"{self.path} has {have} frames, the state recorded {self.frames}: it is not the "
                                 "video this state belongs to")
        self._writer: VideoWriter | None = None

    def write(self, frames) -> None:
        if self._writer is None:
            self._writer = VideoWriter(self.part, fps=self.fps, crf=self.crf)
        self._writer.write(frames)

    def commit(self) -> int:
        """Finish the current segment and append it to the video; returns the frames in the video."""
        w, self._writer = self._writer, None
        if w is None:
            return self.frames
        w.close()
        if not w.frames_written:
            return self.frames
        if self.frames == 0:
            os.replace(self.part, self.path)
        else:
            _concat([self.path, self.part], self.tmp)
            os.replace(self.tmp, self.path)
            os.remove(self.part)
        self.frames += w.frames_written
        return self.frames

    def abort(self) -> None:
        """Drop the uncommitted segment (the committed video stays as it is)."""
        w, self._writer = self._writer, None
        if w is not None:
            try:
                w.close()
            finally:
                for p in (self.part, self.tmp):
                    if os.path.exists(p):
                        os.remove(p)


def _concat(sources: list[str], out: str) -> None:
    """Remux the video streams of ``sources`` (same codec settings) one after another into ``out``."""
    import av

    with av.open(out, mode="w") as dst:
        ost = None
        offset = Fraction(0)  # seconds
        for src in sources:
            with av.open(src) as inp:
                ist = inp.streams.video[0]
                if ost is None:
                    ost = dst.add_stream_from_template(ist)
                tb = ist.time_base
                shift = round(offset / tb)
                end = 0
                for pkt in inp.demux(ist):
                    if pkt.dts is None:  # the demuxer's flush packet
                        continue
                    end = max(end, pkt.pts + (pkt.duration or 0))
                    pkt.pts += shift
                    pkt.dts += shift
                    pkt.stream = ost
                    dst.mux(pkt)
                offset += end * tb
