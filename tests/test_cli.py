"""The command line: the same options everywhere, hints for common slips, words people read."""

from __future__ import annotations

import json
import math

import pytest

from notelm.cli import build_parser, main
from notelm.names import pitch_name, plural
from notelm.plot import curves


def verbs() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "verb").choices


@pytest.mark.parametrize("verb", list(verbs()))
def test_every_verb_takes_help_and_quiet(verb, capsys):
    options = {o for a in verbs()[verb]._actions for o in a.option_strings}
    assert {"-q", "--quiet", "-h"} <= options
    with pytest.raises(SystemExit) as done:
        main([verb, "--help"])
    assert done.value.code == 0 and "--quiet" in capsys.readouterr().out


def test_plot_shows_bits_per_event(tmp_path, capsys):
    records = [{"step": 10, "split": "train", "loss": 1.0, "loss_pitch": math.log(2), "acc_pitch": 0.5},
               {"step": 10, "split": "valid", "loss": 1.0, "loss_pitch": 2 * math.log(2), "acc_pitch": 0.25}]
    assert curves(records)["bits"] == {"train pitch": ([10], [pytest.approx(1.0)]),
                                       "valid pitch": ([10], [pytest.approx(2.0)])}
    assert curves(records)["accuracy"]["valid pitch"] == ([10], [0.25])
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", str(tmp_path), "-q"]) == 0
    assert (tmp_path / "learning_curves.png").stat().st_size > 0 and "learning_curves.png" in capsys.readouterr().out


def test_words():
    assert [plural(1, "piece"), plural(2, "piece"), plural(0, "collection"), plural(1024, "song")] == \
        ["1 piece", "2 pieces", "0 collections", "1,024 songs"]
    assert plural(1, "child", "children") == "1 child" and plural(3, "child", "children") == "3 children"
    assert [pitch_name(p) for p in (0, 60, 61, 127)] == ["C-1", "C4", "C#4", "G9"]
