"""An interrupted training goes on from its last finished epoch and ends with the same weights, bit
for bit, as one that never stopped (benchmark.trainer.TrainingState, checkpoints.save_training_state,
cell.train_or_load): a cell killed at the end of a session loses at most one epoch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmark import cell as cell_module
from benchmark.cell import CellConfig, resolve, train_or_load
from benchmark.checkpoints import load_training_state, training_state_path, weights_sha256
from benchmark.datasets import load_digits
from benchmark.models import build_model
from benchmark.plugins import load_builtins
from benchmark.presets import PROFILES, SMOKE
from benchmark.registry import DEFENSES
from benchmark.trainer import TrainingState, defense_state, seed_everything, train_model

# Three epochs, the cosine schedule and 128 images: every piece of state a resume must restore moves.
TINY = replace(SMOKE, epochs=3, max_train_images=128, schedule_by_dataset=(("digits", "cosine"),))


class Stop(Exception):
    pass


def _train(defense: str, *, stop_after: int | None = None, resume: TrainingState | None = None):
    load_builtins()
    seed_everything(0)
    model = build_model("c2f2")
    snapshots: list[TrainingState] = []

    def on_epoch(state: TrainingState) -> None:
        snapshots.append(state)
        if stop_after is not None and state.epoch == stop_after:
            raise Stop

    try:
        history = train_model(model, load_digits(), DEFENSES.create(defense), TINY, PROFILES["rob28"], seed=0,
                              progress=False, resume=resume, on_epoch=on_epoch)
    except Stop:
        return None, None, snapshots
    return model, history, snapshots


@pytest.mark.parametrize("defense", ["nt", pytest.param("hm", marks=pytest.mark.slow),
                                     pytest.param("colo-tride", marks=pytest.mark.slow)])
def test_resumed_training_ends_with_the_uninterrupted_weights(defense):
    """No defense state (NT, the fast suite), a previous loss (HM), a next phase (COLO-TRIDE)."""
    straight, history, snapshots = _train(defense)
    assert [s.epoch for s in snapshots] == [1, 2]  # after every epoch but the last
    _, _, taken = _train(defense, stop_after=1)
    resumed, resumed_history, _ = _train(defense, resume=taken[-1])
    assert weights_sha256(resumed) == weights_sha256(straight), f"{defense}: resumed after epoch 1"
    assert [t["loss"] for t in resumed_history.telemetry] == [t["loss"] for t in history.telemetry]
    assert len(resumed_history.epoch_seconds) == 3 and resumed_history.train_seconds > 0


def test_a_defense_with_state_that_is_not_plain_is_not_snapshotted():
    load_builtins()
    defense = DEFENSES.create("hm")
    assert defense_state(defense) is not None
    defense._cache = torch.zeros(3)  # a tensor: a snapshot could not restore it exactly on every device
    assert defense_state(defense) is None


def test_resume_rejects_a_state_of_another_schedule():
    _, _, taken = _train("nt", stop_after=1)
    with pytest.raises(Exception, match="cannot resume training at epoch 5"):
        _train("nt", resume=replace(taken[-1], epoch=5, step=5))


@pytest.mark.slow
def test_train_or_load_resumes_an_interrupted_cell(tmp_path, monkeypatch, capsys):
    """Through the store: the snapshot lies beside the checkpoint, the next run resumes from it (and
    says so), the weights are the uninterrupted run's and the snapshot is removed; a foreign or
    corrupt snapshot is ignored."""
    config = CellConfig(dataset="digits", defense="nt", preset="smoke", seed=0, threads=1)
    straight = train_or_load(resolve(config), tmp_path / "straight", progress=False)

    cell = resolve(config)
    results = tmp_path / "interrupted"
    partial = training_state_path(cell.checkpoint_path(results))
    saved = cell_module.save_training_state

    def save_then_die(path, state, *, train_id):
        saved(path, state, train_id=train_id)
        raise Stop

    monkeypatch.setattr(cell_module, "save_training_state", save_then_die)
    with pytest.raises(Stop):
        train_or_load(cell, results, progress=False)
    monkeypatch.undo()
    assert partial.exists() and not cell.checkpoint_path(results).exists()
    assert load_training_state(partial, "another training id") is None
    assert load_training_state(partial, cell.train_id).epoch == 1

    resumed = train_or_load(resolve(config), results, progress=False)
    assert "resuming the training of nt seed 0 on digits after epoch 1 of 2" in capsys.readouterr().err
    assert weights_sha256(resumed.model) == weights_sha256(straight.model)
    assert not partial.exists() and cell.checkpoint_path(results).exists()

    # A truncated snapshot: the training starts again and still ends with the same weights.
    results = tmp_path / "corrupt"
    partial = training_state_path(cell.checkpoint_path(results))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not a snapshot")
    again = train_or_load(resolve(config), results, progress=False)
    assert "resuming" not in capsys.readouterr().err
    assert weights_sha256(again.model) == weights_sha256(straight.model)
    assert not partial.exists()
