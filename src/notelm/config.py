"""The run, train, model and sampling configs: what a preset, ``--set`` and a saved run hold.

A run (``notelm train``) is three sections, the same in a TOML preset and on the
command line (``--set section.key=value``, values in TOML syntax, a bare word is
a string)::

    [data]    representation (a name in encoding.REPRESENTATIONS); [data.encoding]: its settings
    [model]   family (a name in models.FAMILIES) + that family's settings (models/lstm.py: LSTMConfig, ...)
    [train]   TrainConfig below

Every section is a dataclass over ``settings.Settings``: each setting has its
type, default and documentation beside it and one validator checks them all
(``TrainConfig.documentation()`` lists them).  Sampling settings
(``SamplingConfig``) are the flags of ``notelm generate``; each is checked by
its logits processor (``sampling.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from notelm.io import NotelmError, printable, read_text
from notelm.precision import PRECISION_DOC, PRECISIONS
from notelm.settings import Settings, parse_override, setting

CONFIG_DIR = Path(__file__).parent / "configs"
MAX_PRESET_BYTES = 1 << 20  # a preset is a few lines
SECTIONS = ("data", "model", "train")
MAX_SEED = 2**32 - 1  # numpy takes any non-negative seed; the web page and the docs promise this range


# --------------------------------------------------------------------------- the sections of a run


@dataclass
class DataConfig(Settings):
    """``[data]``: which representation the corpus is encoded with, and its settings."""

    section: ClassVar[str] = "data"
    representation: str = setting("events", "the representation: a name in encoding.REPRESENTATIONS")
    encoding: dict = setting({}, "[data.encoding]: the representation's settings (see its settings class)")
    condition: str = setting("collection", "the song label a model is conditioned on: collection (as named on "
                                           "the prepare command line, SOURCE=NAME), group (the folder under the "
                                           "source: composer, tune book) or none",
                             choices=("collection", "group", "none"))

    def check(self) -> None:
        from notelm.encoding import get_representation

        get_representation(self.representation, self.encoding)  # unknown name or setting: refused now


@dataclass
class TrainConfig(Settings):
    """``[train]``: the training loop (``train.py``)."""

    section: ClassVar[str] = "train"
    objective: str = setting("full", "'full': the loss at every position of a crop; 'last': only on the event "
                                     "after a window (the original experiment)", choices=("full", "last"))
    context: int = setting(128, "events per crop (the window length for 'last')", minimum=1, maximum=65536)
    batch_size: int = setting(32, "crops per step (per process under torchrun)", minimum=1, maximum=65536)
    steps: int = setting(2000, "optimizer steps: the training budget", minimum=1, maximum=10**9)
    lr: float = setting(2e-3, "peak learning rate (AdamW), reached after the warmup", minimum=0.0)
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay", minimum=0.0)
    warmup: int = setting(100, "steps of linear warmup", minimum=0, maximum=10**9)
    weight_decay: float = setting(0.01, "AdamW weight decay of matrices (not of biases and norms)", minimum=0.0)
    clip: float = setting(1.0, "gradient norm clipping", above=0.0)
    transpose: bool = setting(True, "shift every crop's pitches by a random interval, where the representation "
                                    "can transpose")
    cond_dropout: float = setting(0.2, "chance of training a crop unconditioned", minimum=0.0, maximum=1.0)
    label_smoothing: float = setting(0.0, "share of the training loss spread over every value a head can give "
                                          "(never certain: for music unlike the training songs); 0: off",
                                     minimum=0.0, below=1.0)
    eval_every: int = setting(200, "steps between evaluations on the valid split (and checkpoints)", minimum=1)
    eval_crops: int = setting(256, "valid crops per evaluation", minimum=1, maximum=1_000_000)
    patience: int = setting(5, "evaluations without improvement before stopping early", minimum=1)
    log_every: int = setting(20, "steps between lines of metrics.jsonl", minimum=1)
    seed: int = setting(0, "random seed of the model's initialization and of the crops", minimum=0,
                         maximum=2**32 - 1)
    crops: str = setting("uniform", "how training crops are drawn: 'uniform' (every crop of every song equally "
                                    "likely), 'by_length' (a song with the chance of its length, then one of its "
                                    "crops: for songs about as long as a crop) or 'balanced' (as by_length, each "
                                    "condition label with the chance of the square root of its size: a small "
                                    "collection is seen more often)", choices=("uniform", "by_length", "balanced"))
    valid_crops: str = setting("uniform", "how the fixed valid crops that choose the best checkpoint are drawn: "
                                          "'uniform' (every crop of every valid song alike: the longest songs weigh "
                                          "most) or 'like_train' (the way train.crops draws the training crops)",
                               choices=("uniform", "like_train"))
    start_crops: float = setting(0.0, "share of training crops that begin at their song's first event (the rest "
                                      "begin anywhere), given to the songs that open least, so that every song of "
                                      "a condition label opens about equally often: how pieces open, learned from "
                                      "every song, not mostly from the short ones", minimum=0.0, maximum=1.0)
    split: str = setting("song", "'song': train/valid/test by song; 'window': the original's random split of "
                                 "windows (it leaks: neighbouring windows overlap)", choices=("song", "window"))
    time_limit: float = setting(0.0, "a safety cap: seconds of training after which the run stops even if "
                                     "train.steps are not done (0: no cap); the budget is train.steps", minimum=0.0)
    threads: int = setting(0, "torch CPU threads (0: all cores)", minimum=0, maximum=1024)
    precision: str = setting("auto", PRECISION_DOC, choices=PRECISIONS)
    compare_ngram: bool = setting(True, "at the end, score the best model and n-grams fitted on the train split "
                                        "on the whole valid songs, and say which is ahead")


@dataclass
class SamplingConfig(Settings):
    """How ``notelm generate`` draws each value: command-line flags, checked by their logits processors."""

    flags: ClassVar[bool] = True
    section: ClassVar[str] = "sampling"
    temperature: float = setting(1.0, "below 1: safer; above 1: wilder")
    top_k: int = setting(0, "sample only among the k likeliest values (0 = off)")
    top_p: float = setting(1.0, "nucleus sampling: the smallest set of values holding this probability (1 = off)")
    repetition_penalty: float = setting(1.0, "divide the odds of pitches used in the last penalty_window events "
                                             "(1 = off)")
    penalty_window: int = setting(16, "how many recent events the repetition penalty looks at")
    max_repeat: int = setting(0, "never the same pitch more than this many times in a row (0 = off)")
    guidance: float = setting(1.0, "with --condition: above 1 pushes the pieces further toward the condition's "
                                   "style, 0 ignores it (classifier-free guidance; 1 = off)", minimum=0.0, maximum=8.0)
    smoothing_floor: float = setting(None, "a model trained with train.label_smoothing = e keeps e / K under each "
                                           "of its K values; sampling takes that floor back (default: the model's "
                                           "own e; 0 keeps it)", kind=float, minimum=0.0, below=1.0)
    seed: int = setting(None, "random seed, 0..2**32-1 (default: a new one each run, printed and saved in "
                              "generation.json; the same seed and settings give the same pieces)", kind=int,
                        minimum=0, maximum=MAX_SEED)
    precision: str = setting("auto", PRECISION_DOC, choices=PRECISIONS)
    copies: str = setting("avoid", "'avoid': no piece repeats more than 16 events in a row of a training song "
                                   "(with a model that carries the copy index of its training songs, "
                                   "copy_index.safetensors); 'allow': the model's own draws",
                          choices=("avoid", "allow"))

    def check(self) -> None:
        from notelm.sampling import build_processors

        for name in ("temperature", "top_p", "repetition_penalty", "guidance"):  # inf passes a processor's "> 0"
            value = getattr(self, name)
            if not math.isfinite(value):
                raise NotelmError(f"{self.label(name)} = {value!r}: expected a finite number")
        build_processors(self)  # each processor checks its own settings


@dataclass
class RunConfig:
    """Everything a training run is made of: ``[data]``, ``[model]`` and ``[train]``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None  # the family's config dataclass (models.lstm.LSTMConfig, ...); None: the default family's
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model is None:
            from notelm.models import family_class

            self.model = family_class(DEFAULT_FAMILY).config_class()

    @property
    def representation(self) -> str:
        return self.data.representation

    @property
    def encoding(self) -> dict:
        return self.data.encoding

    @property
    def family(self) -> str:
        return self.model.family

    def to_json(self) -> dict:
        return {"data": self.data.to_dict(), "model": model_json(self.model), "train": self.train.to_dict()}


DEFAULT_FAMILY = "lstm"


def model_json(cfg) -> dict:
    """A model config as saved: ``family`` first, then the family's settings."""
    return {"family": cfg.family, **cfg.to_dict()}


def model_config(raw: dict, saved: bool = False):
    """``[model]`` (``family`` + that family's settings) -> the family's config dataclass.

    ``saved``: the dict comes from a model or run saved by notelm: settings an older
    notelm wrote for every family (one flat model config) are dropped where this
    family has no such setting.
    """
    from notelm.models import family_class, trainable_families

    if not isinstance(raw, dict):
        raise NotelmError(f"[model] must be a table of settings, not {raw!r}")
    settings = dict(raw)
    family = settings.pop("family", DEFAULT_FAMILY)
    choices = trainable_families() if not saved else None
    if choices is not None and family not in choices:
        raise NotelmError(f"model.family = {family!r}: expected one of {', '.join(map(repr, choices))}")
    config_class = family_class(family).config_class
    if saved:
        known = {f.name for f in dataclasses.fields(config_class)}
        settings = {k: v for k, v in settings.items() if k in known or k not in LEGACY_MODEL_KEYS}
    return config_class.from_dict(settings)


# Settings of the one flat model config notelm wrote before each family had its own (transformer-only ones,
# saved for LSTMs too): a saved model may hold them, a preset may not.
LEGACY_MODEL_KEYS = {"n_heads", "context", "positions", "ff_mult"}


# --------------------------------------------------------------------------- presets and overrides


def apply_overrides(raw: dict, overrides) -> dict:
    """``raw`` (nested dicts, changed in place) with every ``section.key=value`` of ``overrides`` set."""
    for item in overrides:
        path, value = parse_override(item)
        if len(path) < 2:
            raise NotelmError(f"--set {item!r}: expected section.key=value, e.g. train.steps=500")
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise NotelmError(f"--set {item!r}: {part} is a setting, not a section")
        node[path[-1]] = value
    return raw


def read_preset(name_or_path: str | None) -> dict:
    """The raw dict of a TOML preset: a name in configs/ or a path ({} for None)."""
    import tomllib

    if not name_or_path:
        return {}
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / (name_or_path if name_or_path.endswith(".toml") else f"{name_or_path}.toml")
    if not path.exists():
        presets = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise NotelmError(f"config {name_or_path!r}: no such file or preset (presets: {presets})")
    text = read_text(path, MAX_PRESET_BYTES, "not readable TOML")  # a folder, a FIFO, not UTF-8: one line
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise NotelmError(f"{printable(path)}: invalid TOML: {' '.join(str(e).split())[:200]}") from None


def load_config(name_or_path: str | None, overrides=()) -> RunConfig:
    """A TOML preset (a name in configs/ or a path) with ``section.key=value`` overrides."""
    return parse_config(apply_overrides(read_preset(name_or_path), overrides))


def parse_config(raw: dict, saved: bool = False) -> RunConfig:
    """A run config from its raw sections (``saved``: as a run or checkpoint stored it)."""
    if not isinstance(raw, dict):
        raise NotelmError(f"a run config must be a table, not {raw!r}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise NotelmError(f"unknown config section(s): {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    run = RunConfig(DataConfig.from_dict(raw.get("data", {})), model_config(raw.get("model", {}), saved),
                    TrainConfig.from_dict(raw.get("train", {})))
    check_family_reads(run.family, run.representation)
    return run


def check_family_reads(family: str, representation: str) -> None:
    """Refuse a family made for other representations (``NextEventModel.representations``)."""
    from notelm.models import family_class

    reads = family_class(family).representations
    if reads and representation not in reads:
        raise NotelmError(f"model.family = {family!r} reads the {' or '.join(reads)} representation, not "
                          f"{representation!r}: set data.representation or choose another family")


RESUMABLE = {"train.steps", "train.time_limit"}  # what a resumed run may change (raise) with --set
# free on resume: the weights do not depend on them
FREE_ON_RESUME = {"train.precision", "train.compare_ngram", "train.threads"}


def check_resume(saved: RunConfig, asked: RunConfig) -> None:
    """Refuse a resumed run's config unless it is the saved one, or raises only ``RESUMABLE`` settings."""
    old, new = _flat(saved.to_json()), _flat(asked.to_json())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in FREE_ON_RESUME)
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        details = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in refused[:4])
        raise NotelmError(f"--resume continues a run with its saved configuration and can only raise "
                          f"{' or '.join(sorted(RESUMABLE))} (--set); it cannot change {details}")
    lowered = [k for k in changed if _limit(new[k]) < _limit(old[k])]
    if lowered:
        k = lowered[0]
        raise NotelmError(f"--resume can raise {k}, not lower it ({old[k]!r} -> {new[k]!r})")


def _limit(value: float) -> float:
    return float("inf") if value == 0 else value  # a time limit of 0 is no limit


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "encoding":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
