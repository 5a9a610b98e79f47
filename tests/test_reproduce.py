"""The reproduction's table: every figure of every model, including the joint accuracy of a whole event."""

from notelm.reproduce import MODELS, flat_figures, markdown


def _figures(pitch: float) -> dict:
    return {"pitch": pitch, "duration": 0.7, "joint": pitch * 0.7, "bits": 3.5}


def _results() -> dict:
    keys = ["stratified", "majority", "ngram", *MODELS]
    split = {"targets": 100, "songs": 4, "best_ngram": "joint5",
             "figures": {key: _figures(0.1 + 0.1 * i) for i, key in enumerate(keys)}}
    return {"quick": False, "steps": None, "time_limit": 600.0, "seconds": 1.0,
            "corpora": {"bach": {"source": "music21:bach", "splits": {"window": split, "song": split}}}}


def test_markdown_shows_pitch_duration_joint_and_bits_of_both_splits():
    table = markdown(_results())
    assert "| model | window split: pitch | duration | joint | bits | song split: pitch | duration | joint | bits |" \
        in table
    # the n-gram is the third row: pitch 0.3, joint 0.3 * 0.7
    assert "| best n-gram (window: joint5, song: joint5) | 30.0 % | 70.0 % | 21.0 % | 3.50 | 30.0 % | 70.0 % | " \
           "21.0 % | 3.50 |" in table


def test_flat_figures_name_the_joint_accuracy():
    flat = flat_figures(_results())
    assert flat["bach_song_ngram_joint"] == 0.21
    assert flat["bach_window_majority_pitch"] == 0.2
