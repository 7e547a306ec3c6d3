"""Prompt grammar of the procedural video world: tables, parser, printer, sampler, tokenizer.

The parser, the printer (`SceneSpec.to_prompt`), the sampler, the BNF text in error
messages and `VOCABULARY` are all driven by the tables below, so they cannot drift apart:
adding a colour or a motion is a one-line change here (plus its renderer).

Templates are space-separated words; `<name>` is a slot filled from `LEAVES[name]`
(one word) or from `NESTED[name]` (a table of sub-templates).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

SIZES = ("small", "medium", "large")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "gray")
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "star")
TEXTURES = ("plain", "striped", "checkered", "dotted", "gradient", "wavy", "blotchy")
SECONDS = (2, 4, 8, 16, 32, 64)  # away times; geometric so lag bins fill evenly

LEAVES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "colour": COLOURS,
    "shape": SHAPES,
    "texture": TEXTURES,
    "dir": ("left", "right", "up", "down"),
    "hdir": ("left", "right"),
    "pace": ("slowly", "steadily", "quickly"),
    "seconds": tuple(str(s) for s in SECONDS),
}
MOTIONS = {
    "still": "standing still",
    "drift": "drifting <dir>",
    "bounce": "bouncing",
    "orbit": "orbiting",
    "leave": "leaving and returning after <seconds> seconds",
}
CAMERAS = {
    "static": "is static",
    "return": "pans <hdir> and returns after <seconds> seconds",
    "sweep": "<pace> sweeps back and forth",
    "loop": "<pace> keeps panning <hdir>",
}
OCCLUDERS = {
    "curtain": "a wide <colour> curtain passes",
    "wall": "a narrow <colour> wall passes",
}
NESTED = {"motion": MOTIONS, "camera": CAMERAS, "occluder": OCCLUDERS}
OBJECT = "a <size> <colour> <shape> <motion>"
SCENE = "<objects> over a <texture> <colour> background , camera <camera>"
OCCLUDER_TAIL = ", <occluder>"
MAX_OBJECTS = 3
# slot name -> dataclass field it fills
_FIELD = {"dir": "direction", "hdir": "direction", "seconds": "seconds", "pace": "pace"}


@dataclass(frozen=True)
class ObjectSpec:
    size: str
    colour: str
    shape: str
    motion: str = "still"  # key of MOTIONS
    direction: str | None = None  # drift only
    seconds: int | None = None  # leave only: time fully out of view

    def __post_init__(self):
        _check(self, {"size": SIZES, "colour": COLOURS, "shape": SHAPES}, MOTIONS, self.motion)


@dataclass(frozen=True)
class CameraSpec:
    move: str = "static"  # key of CAMERAS
    direction: str | None = None  # return/loop: left|right
    seconds: int | None = None  # return: how long the home view's centre is out of view
    pace: str | None = None  # sweep/loop

    def __post_init__(self):
        _check(self, {}, CAMERAS, self.move)


@dataclass(frozen=True)
class OccluderSpec:
    kind: str  # key of OCCLUDERS
    colour: str

    def __post_init__(self):
        _check(self, {"colour": COLOURS}, OCCLUDERS, self.kind)


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    texture: str
    colour: str  # background colour
    camera: CameraSpec = field(default_factory=CameraSpec)
    occluder: OccluderSpec | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        _check(self, {"texture": TEXTURES, "colour": COLOURS}, None, None)

    def to_prompt(self) -> str:
        objs = " and ".join(_fill(OBJECT, _slots(o, "motion", MOTIONS[o.motion])) for o in self.objects)
        cam = _fill(CAMERAS[self.camera.move], _slots(self.camera))
        text = _fill(SCENE, {"objects": objs, "texture": self.texture, "colour": self.colour, "camera": cam})
        if self.occluder is not None:
            occ = _fill(OCCLUDERS[self.occluder.kind], {"colour": self.occluder.colour})
            text += " " + _fill(OCCLUDER_TAIL, {"occluder": occ})
        return text.replace(" ,", ",")


def _slots_in(template: str) -> list[str]:
    return [w[1:-1] for w in template.split() if w.startswith("<")]


def _check(spec, leaf_fields: dict, table: dict | None, key: str | None) -> None:
    for name, allowed in leaf_fields.items():
        if getattr(spec, name) not in allowed:
            raise ValueError(f"{type(spec).__name__}.{name}={getattr(spec, name)!r} not in {allowed}")
    if table is None:
        return
    if key not in table:
        raise ValueError(f"{type(spec).__name__}: {key!r} not in {tuple(table)}")
    needed = {_FIELD[s] for s in _slots_in(table[key]) if s in _FIELD}
    for f in ("direction", "seconds", "pace"):
        if not hasattr(spec, f):
            continue
        value = getattr(spec, f)
        if (value is None) == (f in needed):
            raise ValueError(f"{type(spec).__name__}({key!r}): field {f} must be {'set' if f in needed else 'None'}")
    for s in _slots_in(table[key]):
        if s in _FIELD and str(getattr(spec, _FIELD[s])) not in LEAVES[s]:
            raise ValueError(f"{type(spec).__name__}.{_FIELD[s]}={getattr(spec, _FIELD[s])!r} not in {LEAVES[s]}")


def _slots(spec, nested: str | None = None, nested_template: str | None = None) -> dict:
    """Slot values of a spec, ready for `_fill`."""
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    for slot, fld in _FIELD.items():
        values[slot] = values.get(fld)
    if nested:
        values[nested] = _fill(nested_template, values)
    return values


def _fill(template: str, values: dict) -> str:
    return " ".join(str(values[w[1:-1]]) if w.startswith("<") else w for w in template.split())


# ---------------------------------------------------------------- parsing
def words(text: str) -> list[str]:
    """Lower-cased words of a prompt; ',' is a word of its own; a final '.' is ignored."""
    return text.lower().strip().rstrip(".").replace(",", " , ").split()


class _Fail(Exception):
    pass


class _Parser:
    def __init__(self, text: str):
        self.w = words(text)
        self.best = (-1, "")  # furthest failure: (position, what was expected)

    def expect(self, i: int, what: str):
        if i > self.best[0]:
            self.best = (i, what)
        raise _Fail

    def match(self, template: str, i: int) -> tuple[int, dict]:
        out: dict = {}
        for tok in template.split():
            if tok.startswith("<"):
                name = tok[1:-1]
                if name in NESTED:
                    i, out[name] = self.alternatives(NESTED[name], i, name)
                elif i < len(self.w) and self.w[i] in LEAVES[name]:
                    out[name] = self.w[i]
                    i += 1
                else:
                    self.expect(i, f"<{name}>")
            elif i < len(self.w) and self.w[i] == tok:
                i += 1
            else:
                self.expect(i, repr(tok))
        return i, out

    def alternatives(self, table: dict, i: int, name: str):
        for key, template in table.items():
            try:
                j, slots = self.match(template, i)
                return j, (key, slots)
            except _Fail:
                pass
        self.expect(i, f"<{name}>")

    def scene(self) -> SceneSpec:
        objects, i = [], 0
        head, rest = SCENE.split(" ", 1)
        assert head == "<objects>"
        while True:
            i, o = self.match(OBJECT, i)
            key, ms = o["motion"]
            objects.append(ObjectSpec(o["size"], o["colour"], o["shape"], key, *_dir_sec(ms)))
            if len(objects) == MAX_OBJECTS or i >= len(self.w) or self.w[i] != "and":
                break
            i += 1
        i, s = self.match(rest, i)
        ckey, cs = s["camera"]
        d, sec = _dir_sec(cs)
        camera = CameraSpec(ckey, d, sec, cs.get("pace"))
        occluder = None
        if i < len(self.w):
            i, t = self.match(OCCLUDER_TAIL, i)
            okey, os_ = t["occluder"]
            occluder = OccluderSpec(okey, os_["colour"])
        if i != len(self.w):
            self.expect(i, "end of prompt")
        return SceneSpec(tuple(objects), s["texture"], s["colour"], camera, occluder)


def _dir_sec(slots: dict) -> tuple[str | None, int | None]:
    d = slots.get("dir", slots.get("hdir"))
    sec = slots.get("seconds")
    return d, (int(sec) if sec is not None else None)


def parse_prompt(text: str) -> SceneSpec:
    """Parse a prompt of the world grammar into a SceneSpec; ValueError (with the grammar) if invalid."""
    p = _Parser(text)
    try:
        return p.scene()
    except _Fail:
        i, what = p.best
        got = repr(p.w[i]) if i < len(p.w) else "end of prompt"
        raise ValueError(f"cannot parse prompt {text!r}: at word {i} expected {what}, got {got}.\n"
                         f"Prompts follow this grammar:\n{GRAMMAR}") from None


# ---------------------------------------------------------------- grammar text and vocabulary
def _bnf_alt(template: str) -> str:
    out, lit = [], []
    for w in template.split():
        if w.startswith("<"):
            if lit:
                out.append('"' + " ".join(lit) + '"')
                lit = []
            out.append(w)
        else:
            lit.append(w)
    if lit:
        out.append('"' + " ".join(lit) + '"')
    return " ".join(out)


def _grammar_text() -> str:
    objs = "<object>" + "".join(' ["and" <object>' for _ in range(MAX_OBJECTS - 1)) + "]" * (MAX_OBJECTS - 1)
    rules = [("prompt", _bnf_alt(SCENE).replace("<objects>", objs) + f" [{_bnf_alt(OCCLUDER_TAIL)}]"),
             ("object", _bnf_alt(OBJECT))]
    rules += [(name, " | ".join(_bnf_alt(t) for t in table.values())) for name, table in NESTED.items()]
    rules += [(name, " | ".join(f'"{v}"' for v in vals)) for name, vals in LEAVES.items()]
    width = max(len(n) for n, _ in rules) + 2
    return "\n".join(f"  {('<' + n + '>').ljust(width)} ::= {r}" for n, r in rules)


GRAMMAR = _grammar_text()


def _all_templates() -> list[str]:
    return [SCENE, OBJECT, OCCLUDER_TAIL, "and"] + [t for table in NESTED.values() for t in table.values()]


VOCABULARY: list[str] = sorted({w for t in _all_templates() for w in words(t) if not w.startswith("<")}
                               | {v for vals in LEAVES.values() for v in vals})
PAD_ID = 0
_IDS = {w: i + 1 for i, w in enumerate(VOCABULARY)}


def _longest(table: dict) -> int:
    return max(len(t.split()) for t in table.values())


# longest possible prompt in words (slots are one word each, nested slots take their longest form)
MAX_PROMPT_WORDS = (MAX_OBJECTS * (len(OBJECT.split()) - 1 + _longest(MOTIONS)) + (MAX_OBJECTS - 1)
                    + len(SCENE.split()) - 2 + _longest(CAMERAS) + len(OCCLUDER_TAIL.split()) - 1 + _longest(OCCLUDERS))


def tokenize(prompt: str, max_len: int | None = None) -> list[int]:
    """Word ids (1..len(VOCABULARY), index into VOCABULARY + 1); right-padded with PAD_ID=0 to max_len."""
    ids = []
    for w in words(prompt):
        if w not in _IDS:
            raise ValueError(f"unknown word {w!r} in prompt {prompt!r}; vocabulary: {' '.join(VOCABULARY)}")
        ids.append(_IDS[w])
    if max_len is not None:
        if len(ids) > max_len:
            raise ValueError(f"prompt has {len(ids)} words > max_len={max_len}")
        ids += [PAD_ID] * (max_len - len(ids))
    return ids


def detokenize(ids) -> str:
    return " ".join(VOCABULARY[i - 1] for i in ids if i != PAD_ID).replace(" ,", ",")


# ---------------------------------------------------------------- sampling
def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _pick(rng, options, p=None):
    return options[rng.choice(len(options), p=p)]


def sample_object(rng, avoid: set[str]) -> ObjectSpec:
    motion = _pick(rng, list(MOTIONS), p=[0.2, 0.25, 0.2, 0.2, 0.15])
    direction = _pick(rng, LEAVES["dir"]) if motion == "drift" else None
    seconds = int(_pick(rng, SECONDS)) if motion == "leave" else None
    colour = _pick(rng, [c for c in COLOURS if c not in avoid])
    return ObjectSpec(_pick(rng, SIZES), colour, _pick(rng, SHAPES), motion, direction, seconds)


def sample_camera(rng) -> CameraSpec:
    move = _pick(rng, list(CAMERAS), p=[0.2, 0.4, 0.2, 0.2])
    hdir = _pick(rng, LEAVES["hdir"]) if move in ("return", "loop") else None
    seconds = int(_pick(rng, SECONDS)) if move == "return" else None
    pace = _pick(rng, LEAVES["pace"]) if move in ("sweep", "loop") else None
    return CameraSpec(move, hdir, seconds, pace)


def sample_scene(seed_or_rng=None) -> SceneSpec:
    """A random scene of the grammar (int seed or numpy Generator). Object colours differ from the
    background's so they stay visible (the grammar itself allows any combination)."""
    rng = _rng(seed_or_rng)
    bg = _pick(rng, COLOURS)
    objects = [sample_object(rng, {bg}) for _ in range(int(rng.integers(1, MAX_OBJECTS + 1)))]
    occluder = None
    if rng.random() < 0.25:
        occluder = OccluderSpec(_pick(rng, list(OCCLUDERS)), _pick(rng, [c for c in COLOURS if c != bg]))
    return SceneSpec(tuple(objects), _pick(rng, TEXTURES), bg, sample_camera(rng), occluder)


def sample_prompt(seed_or_rng=None) -> str:
    return sample_scene(seed_or_rng).to_prompt()
