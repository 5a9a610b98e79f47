"""Checkpoints: safetensors tensors + a JSON config, written atomically, loaded defensively.

A model directory holds ``config.json`` and ``model.safetensors``, the same for
every family::

    {"family": "lstm", "model": {"family": "lstm", ...its settings}, "vocab": {...}}

A training checkpoint adds ``optimizer.safetensors`` and ``rng.safetensors``
and, inside ``config.json``, the run's config and the training state.  Nothing
here unpickles: a checkpoint can carry numbers and names, never code.

A run directory (``notelm train -o RUN``) holds ``best/`` (the weights with the
lowest validation loss), ``checkpoint/`` (the latest state, for ``--resume``)
and ``metrics.jsonl``; ``resolve`` finds the right one from either path.
"""

from __future__ import annotations

from pathlib import Path

from notelm.config import model_config, model_json
from notelm.copyguard import guard_for
from notelm.encoding import from_vocab
from notelm.encoding.vocab import Vocab
from notelm.io import NotelmError, atomic_dir, printable, read_json, write_json
from notelm.models import FAMILIES, NextEventModel, family_class

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib"}
WEIGHTS = "model.safetensors"
# config.json and run.json hold settings and a vocabulary (a few kB); parsing JSON takes several times a file's
# size in memory, so a bigger file is refused unread
MAX_CONFIG_BYTES = 64 << 20


# --------------------------------------------------------------------------- finding a model


def default_model_path() -> Path:
    """The model shipped inside the package (trained by `notelm train`; see the README)."""
    path = Path(__file__).parent / "assets" / "default_model"
    if not (path / "config.json").exists():
        raise NotelmError("no default model is installed; pass --model RUN_DIR (train one with `notelm train`)")
    return path


def resolve(path) -> Path:
    """The model directory for a run directory or a model directory; ``default`` (when no
    such file is here) names the model shipped inside the package."""
    path = Path(path)
    if str(path) == "default" and not path.exists():
        return default_model_path()
    if not path.exists():
        raise NotelmError(f"{path}: no such model or run directory")
    if path.is_file():
        path = path.parent
    for candidate in (path, path / "best", path / "checkpoint"):
        if (candidate / "config.json").exists():
            return candidate
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES] if path.is_dir() else []
    if pickles:
        raise NotelmError(f"{path}: found {', '.join(sorted(pickles))} but no config.json + {WEIGHTS}; "
                          "notelm never loads pickle files (they can run code)")
    raise NotelmError(f"{path}: not a notelm model (no config.json here or in best/ or checkpoint/)")


def read_run(path) -> dict:
    """A run's ``run.json`` (also when given its ``best/`` or ``checkpoint/``), or {} for a bare model
    directory; checked where notelm reads it (``corpus``, ``init``, the ``[train]`` settings it knows),
    so a damaged file is a one-line error naming it rather than a crash later."""
    path = Path(path)
    for candidate in (path, path.parent):
        file = candidate / "run.json"
        if file.exists():
            return _checked_run(file, read_json(file, MAX_CONFIG_BYTES))
    return {}


def _checked_run(file: Path, run) -> dict:
    from notelm.config import TrainConfig

    if not isinstance(run, dict):
        raise NotelmError(f"{printable(file)}: expected a JSON object")
    for key in ("corpus", "init"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise NotelmError(f"{printable(file)}: '{key}' must be a path (a string), not {run[key]!r:.40}")
    train = run.get("train", {})
    if not isinstance(train, dict):
        raise NotelmError(f"{printable(file)}: 'train' must be an object")
    known = {k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}
    try:
        TrainConfig.from_dict(known)
    except NotelmError as e:
        raise NotelmError(f"{printable(file)}: {e}") from None
    return run


# --------------------------------------------------------------------------- tensors on disk


def write_tensors(file: Path, tensors: dict, tensor_format: str) -> None:
    """One safetensors file from numpy arrays (``"numpy"``) or torch tensors (``"torch"``)."""
    if tensor_format == "torch":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(file))
    else:
        import numpy as np
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(file))


def load_tensors(file: Path, tensor_format: str = "torch") -> dict:
    """Every tensor of a safetensors file, as torch tensors or numpy arrays."""
    from safetensors import SafetensorError

    if tensor_format == "torch":
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    _check_regular(file)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise NotelmError(f"{file}: not a readable safetensors file ({e})") from None


def tensor_headers(file: Path) -> dict[str, tuple[str, tuple]]:
    """Name -> (dtype, shape) of every tensor in a safetensors file, read from its header (no data loaded).
    safetensors itself refuses a header whose byte ranges do not match the dtypes and shapes."""
    from safetensors import SafetensorError, safe_open

    _check_regular(file)
    try:
        with safe_open(str(file), "numpy") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise NotelmError(f"{file}: not a readable safetensors file ({e})") from None


def _check_regular(file: Path) -> None:
    """A safetensors file is memory-mapped: a FIFO in its place would block forever, a device map anything."""
    import os
    import stat

    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        raise NotelmError(f"{printable(file)}: missing (a checkpoint needs its safetensors weights)") from None
    except OSError as e:
        raise NotelmError(f"{printable(file)}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise NotelmError(f"{printable(file)}: not a regular file (a safetensors file was expected)")


# --------------------------------------------------------------------------- models of every family


def save_model(model: NextEventModel, directory, extra_config: dict | None = None,
               extra_tensors: dict[str, dict] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``<name>.safetensors`` per extra, torch tensors)
    into ``directory``, all at once: a reader sees the old directory or the whole new one."""
    config = {"family": model.family, "model": model_json(model.cfg), "vocab": model.vocab.to_json(),
              **(extra_config or {})}
    tensors = model.tensors()
    with atomic_dir(Path(directory)) as tmp:
        write_tensors(tmp / WEIGHTS, tensors, model.tensor_format)
        for name, extra in (extra_tensors or {}).items():
            write_tensors(tmp / f"{name}.safetensors", extra, "torch")
        write_json(tmp / "config.json", config)


def read_config(directory: Path) -> dict:
    """A model directory's ``config.json``, checked to name a known family."""
    config = read_json(directory / "config.json", MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise NotelmError(f"{directory / 'config.json'}: expected a JSON object")
    family = config.get("family")
    if family not in FAMILIES:
        raise NotelmError(f"{directory / 'config.json'}: unknown model family {family!r}; "
                          f"expected one of {', '.join(FAMILIES)}")
    return config


def load_model(path, device: str = "cpu") -> NextEventModel:
    """Any saved notelm model, of any family, from a run or model directory."""
    directory = resolve(path)
    config = read_config(directory)
    model = model_from_directory(directory, config, device)
    # the run that made it (its run.json, or the trained_with a shipped model keeps), checked as every run is:
    # its train.label_smoothing is the floor sampling takes back
    run = read_run(directory) or _checked_run(directory / "config.json", config.get("trained_with") or {})
    model.label_smoothing = float(run.get("train", {}).get("label_smoothing", 0.0))
    model.copy_guard = guard_for(directory, model.vocab)  # what generate avoids copying (copyguard.py)
    return model


def model_from_directory(directory: Path, config: dict, device: str = "cpu") -> NextEventModel:
    """The model ``config`` (a directory's ``config.json``) describes, its tensors read from ``directory``.

    Config and vocabulary are validated first; then the tensor shapes are compared
    from the file's header, before anything is allocated.
    """
    cls = family_class(config["family"])
    vocab, cfg = _model_settings(directory, config)
    file = directory / WEIGHTS
    headers = tensor_headers(file)
    problems = cls.shape_problems(vocab, cfg, {k: shape for k, (_, shape) in headers.items()})
    if problems:
        raise NotelmError(f"{directory}: weights do not match the config: {_first(problems)}")
    wrong = [f"{k}: {dtype}" for k, (dtype, _) in headers.items() if dtype not in cls.saved_dtypes]
    if wrong:  # e.g. float32 weights relabelled int32: the same bytes, read as nonsense
        raise NotelmError(f"{file}: tensors of the wrong type for the {cls.family} family ({_first(wrong)}; "
                          f"expected {', '.join(cls.saved_dtypes)})")
    model = cls.build(vocab, cfg, device=device)
    tensors = load_tensors(file, cls.tensor_format)
    _check_values(file, tensors)
    try:
        model.load_tensors(tensors)
    except NotelmError as e:
        raise NotelmError(f"{directory}: {e}") from None
    except (IndexError, ValueError, TypeError, OverflowError) as e:  # count tables that do not fit together
        raise NotelmError(f"{file}: tables that do not fit together ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]}); the file is damaged") from None
    _check_values(file, model.tensors())  # float64 weights beyond float32's range became infinite
    return model


def _check_values(file: Path, tensors: dict) -> None:
    bad = _value_problems(tensors)
    if bad:  # NaN weights make every prediction NaN: generation wrote empty pieces, evaluate crashed
        raise NotelmError(f"{file}: {_first(bad)}; the weights are damaged")


def _first(problems: list[str], n: int = 3) -> str:
    more = f" (and {len(problems) - n} more)" if len(problems) > n else ""
    return "; ".join(problems[:n]) + more


def _value_problems(tensors: dict) -> list[str]:
    """Tensors no model can hold: NaN or infinite weights, negative counts or keys."""
    import numpy as np
    import torch

    problems = []
    for name, t in tensors.items():
        if torch.is_tensor(t):
            t = t.detach()
            if t.is_floating_point():
                n = int((~torch.isfinite(t)).sum())
                problems += [f"{name} holds {n} NaN or infinite values"] if n else []
            continue
        t = np.asarray(t)
        if t.dtype.kind == "f":
            n = int((~np.isfinite(t)).sum())
            problems += [f"{name} holds {n} NaN or infinite values"] if n else []
        elif t.dtype.kind == "i" and t.size and t.min() < 0:
            problems.append(f"{name} holds negative values")
    return problems


def _model_settings(directory: Path, config: dict):
    """(vocabulary, the family's config dataclass) of a saved model, validated."""
    where = directory / "config.json"
    settings = config.get("model")
    if settings is None and not family_class(config["family"]).trainable:
        settings = {k: v for k, v in config.items() if k != "vocab"}  # n-grams and dummies of older notelm: flat
    if not isinstance(settings, dict) or not isinstance(config.get("vocab"), dict):
        raise NotelmError(f"{where}: needs 'model' and 'vocab' objects")
    settings.setdefault("family", config["family"])
    if settings["family"] != config["family"]:
        raise NotelmError(f"{where}: family {config['family']!r} but model.family {settings['family']!r}")
    try:
        cfg = model_config(settings, saved=True)
        vocab = Vocab.from_json(config["vocab"])
        # the encoder settings it was trained with must exist; settings added since it was saved take
        # their defaults (which encode as before), so the model still reads corpora encoded today
        vocab.config = from_vocab(vocab).config
    except NotelmError as e:
        raise NotelmError(f"{where}: {e}") from None
    return vocab, cfg


# --------------------------------------------------------------------------- training state


def optimizer_tensors(optimizer) -> dict:
    """An optimizer's state as flat tensors (``<param index>.<name>``), for a safetensors file."""
    import torch

    out = {}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(optimizer, tensors: dict) -> None:
    """Put the saved state (``optimizer_tensors``) back; a tensor of the wrong shape, kind or value raises
    ValueError (it would fail at the next step, or train on NaN)."""
    import torch

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state_dict()
    restored: dict = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        param = params[int(i)]
        if not value.is_floating_point():
            raise ValueError(f"{key}: {str(value.dtype).removeprefix('torch.')} where the optimizer keeps floats")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{key}: holds NaN or infinite values")
        if name != "step" and value.shape != param.shape:
            raise ValueError(f"{key}: shape {tuple(value.shape)} for a parameter of {tuple(param.shape)}")
        restored.setdefault(int(i), {})[name] = value
    state["state"] = restored
    optimizer.load_state_dict(state)


# what the training state holds, of which JSON type (``train.Session.state``)
TRAIN_STATE = {"step": int, "bad_evals": int, "events": int, "elapsed": float, "best_valid": float, "stopped": str}


def _check_train_state(state) -> None:
    if not isinstance(state, dict):
        raise TypeError("train_state is not an object")
    for key, kind in TRAIN_STATE.items():
        value = state.get(key, kind())
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = isinstance(value, str) if kind is str else number and (kind is float or isinstance(value, int))
        if not ok or (number and (value != value or value < 0 or (key != "best_valid" and value == float("inf")))):
            raise ValueError(f"train_state.{key} = {value!r:.40}")


def save_training_checkpoint(directory, model, optimizer, run_json: dict, state: dict, rng_states: list) -> None:
    """The model plus everything ``--resume`` needs: optimizer, training state, every rank's random states."""
    import torch

    torch_states = {f"rank{r}.torch": torch.as_tensor(s["torch"]) for r, s in enumerate(rng_states)}
    extra = {"run": run_json, "train_state": {**state, "numpy_rng": [s["numpy"] for s in rng_states]}}
    save_model(model, directory, extra_config=extra,
               extra_tensors={"optimizer": optimizer_tensors(optimizer), "rng": torch_states})


def restore_training_state(directory: Path, config: dict, optimizer, rank: int) -> tuple[dict, dict, object]:
    """(training state, this rank's numpy bit-generator state, its torch RNG state) of a checkpoint;
    the optimizer's state is restored in place."""
    try:
        state = config["train_state"]
        _check_train_state(state)
        numpy_state = state["numpy_rng"][rank]
        torch_state = load_tensors(directory / "rng.safetensors")[f"rank{rank}.torch"]
        restore_optimizer(optimizer, load_tensors(directory / "optimizer.safetensors"))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise NotelmError(f"{directory}: the training state cannot be restored ({type(e).__name__}: {e}); "
                          "the checkpoint is damaged or from another run") from None
    return state, numpy_state, torch_state
