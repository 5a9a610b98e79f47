"""Checkpoints: safetensors weights + a JSON config, written atomically, loaded defensively.

A model directory holds ``config.json`` (family, model settings, vocabulary)
and ``model.safetensors``.  A training checkpoint adds ``optimizer.safetensors``
and the training state inside ``config.json``.  Nothing here unpickles: a
checkpoint can carry numbers and names, never code.

A run directory (``notelm train -o RUN``) holds ``best/`` (the weights with the
lowest validation loss), ``checkpoint/`` (the latest state, for ``--resume``)
and ``metrics.jsonl``; ``resolve`` finds the right one from either path.
"""

from __future__ import annotations

import json
from pathlib import Path

from notelm.io import NotelmError, atomic_dir, read_json, write_json

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib"}
FAMILIES = ("lstm", "transformer", "ngram")


def save_weights(directory: Path, state_dict: dict, config: dict, extra: dict[str, dict] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``<name>.safetensors`` for each extra) atomically."""
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp / "model.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        write_json(tmp / "config.json", config)


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
        raise NotelmError(f"{path}: found {', '.join(sorted(pickles))} but no config.json + model.safetensors; "
                          "notelm never loads pickle files (they can run code)")
    raise NotelmError(f"{path}: not a notelm model (no config.json here or in best/ or checkpoint/)")


def read_config(directory: Path) -> dict:
    try:
        config = read_json(directory / "config.json")
    except json.JSONDecodeError as e:
        raise NotelmError(f"{directory / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise NotelmError(f"{directory / 'config.json'}: expected a JSON object")
    family = config.get("family")
    if family not in FAMILIES:
        raise NotelmError(f"{directory / 'config.json'}: unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return config


def load_tensors(file: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
        with safe_open(str(file), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise NotelmError(f"{file}: not a readable safetensors file ({e})") from None


def load_model(path, device: str = "cpu"):
    """Any trained notelm model (neural or n-gram) from a run or model directory."""
    directory = resolve(path)
    config = read_config(directory)
    if config["family"] == "ngram":
        from notelm.models.ngram import NGramModel

        return NGramModel.load(directory)
    return load_neural(directory, config, device)


def load_neural(directory: Path, config: dict, device: str = "cpu"):
    import torch

    from notelm.encoding import from_vocab
    from notelm.encoding.vocab import Vocab
    from notelm.models.neural import ModelConfig, NeuralModel, build_net

    if not isinstance(config.get("model"), dict) or not isinstance(config.get("vocab"), dict):
        raise NotelmError(f"{directory / 'config.json'}: needs 'model' and 'vocab' objects")
    try:
        cfg = ModelConfig.from_dict(config["model"]).validate()
        vocab = Vocab.from_json(config["vocab"])
        from_vocab(vocab)  # the encoder settings it was trained with must exist
    except NotelmError as e:
        raise NotelmError(f"{directory / 'config.json'}: {e}") from None
    if cfg.family != config["family"]:
        raise NotelmError(f"{directory / 'config.json'}: family {config['family']!r} but model.family {cfg.family!r}")
    # Compare shapes before allocating anything: the network is built on the meta device (shapes
    # only) and the file's shapes come from its header, so a tampered config cannot make us
    # allocate more than the weights file itself holds.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_net(vocab, cfg).state_dict().items()}
    found = tensor_shapes(directory / "model.safetensors")
    problems = [f"{k}: missing" for k in expected if k not in found]
    problems += [f"{k}: unexpected" for k in found if k not in expected]
    problems += [f"{k}: shape {found[k]} != {v}" for k, v in expected.items() if k in found and found[k] != v]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NotelmError(f"{directory}: weights do not match the config: {'; '.join(problems[:3])}{more}")
    model = NeuralModel(vocab, cfg, device=device)
    weights = load_tensors(directory / "model.safetensors")
    expected = model.net.state_dict()
    with torch.no_grad():
        model.net.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})
    return model
