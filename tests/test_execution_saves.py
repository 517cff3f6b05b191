"""papermill's per-cell saves are throttled, never lost: the held save is written by a timer or on
every ending (execution.execute flushes before anything reads the notebook)."""
from __future__ import annotations

import json
import time

from ops_lib import execution


def _nb(n: int) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "source": f"cell {n}"}], "metadata": {},
                       "nbformat": 4, "nbformat_minor": 5})


def test_saves_within_the_interval_are_held_and_flushed(tmp_path):
    handler = execution._MaskedNotebookHandler()
    target = tmp_path / "run.ipynb"
    path = execution._MASKED_SCHEME + str(target)
    handler.write(_nb(1), path)
    assert "cell 1" in target.read_text()          # the first save is written at once
    handler.write(_nb(2), path)
    handler.write(_nb(3), path)
    assert "cell 1" in target.read_text()          # the next ones are held...
    handler.flush(target, forget=True)
    assert "cell 3" in target.read_text()          # ...and the newest is written on flush


def test_a_held_save_is_written_when_the_interval_is_up(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "SAVE_INTERVAL_S", 0.2)
    handler = execution._MaskedNotebookHandler()
    target = tmp_path / "run.ipynb"
    path = execution._MASKED_SCHEME + str(target)
    handler.write(_nb(1), path)
    handler.write(_nb(2), path)
    deadline = time.monotonic() + 5
    while "cell 2" not in target.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cell 2" in target.read_text()


def test_saves_are_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_" + "a" * 24)
    handler = execution._MaskedNotebookHandler()
    target = tmp_path / "run.ipynb"
    handler.write(_nb(1).replace("cell 1", "sk_test_" + "a" * 24), execution._MASKED_SCHEME + str(target))
    assert "sk_test_" + "a" * 24 not in target.read_text()
