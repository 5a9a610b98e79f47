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

import json
from pathlib import Path

from notelm.config import model_config, model_json
from notelm.encoding import from_vocab
from notelm.encoding.vocab import Vocab
from notelm.io import NotelmError, atomic_dir, read_json, write_json
from notelm.models import FAMILIES, NextEventModel, family_class

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib"}
WEIGHTS = "model.safetensors"


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
    if not file.exists():
        raise NotelmError(f"{file}: missing (a checkpoint needs its safetensors weights)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise NotelmError(f"{file}: not a readable safetensors file ({e})") from None


def tensor_shapes(file: Path) -> dict[str, tuple]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no data loaded)."""
    from safetensors import SafetensorError, safe_open

    if not file.exists():
        raise NotelmError(f"{file}: missing (a checkpoint needs its safetensors weights)")
    try:
        with safe_open(str(file), "numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise NotelmError(f"{file}: not a readable safetensors file ({e})") from None


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
    try:
        config = read_json(directory / "config.json")
    except json.JSONDecodeError as e:
        raise NotelmError(f"{directory / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
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
    return model_from_directory(directory, read_config(directory), device)


def model_from_directory(directory: Path, config: dict, device: str = "cpu") -> NextEventModel:
    """The model ``config`` (a directory's ``config.json``) describes, its tensors read from ``directory``.

    Config and vocabulary are validated first; then the tensor shapes are compared
    from the file's header, before anything is allocated.
    """
    cls = family_class(config["family"])
    vocab, cfg = _model_settings(directory, config)
    file = directory / WEIGHTS
    problems = cls.shape_problems(vocab, cfg, tensor_shapes(file))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NotelmError(f"{directory}: weights do not match the config: {'; '.join(problems[:3])}{more}")
    model = cls.build(vocab, cfg, device=device)
    try:
        model.load_tensors(load_tensors(file, cls.tensor_format))
    except NotelmError as e:
        raise NotelmError(f"{directory}: {e}") from None
    return model


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
    state = optimizer.state_dict()
    restored: dict = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        restored.setdefault(int(i), {})[name] = value
    state["state"] = restored
    optimizer.load_state_dict(state)


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
        numpy_state = state["numpy_rng"][rank]
        torch_state = load_tensors(directory / "rng.safetensors")[f"rank{rank}.torch"]
        restore_optimizer(optimizer, load_tensors(directory / "optimizer.safetensors"))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        raise NotelmError(f"{directory}: the training state cannot be restored ({type(e).__name__}: {e}); "
                          "the checkpoint is damaged or from another run") from None
    return state, numpy_state, torch_state
