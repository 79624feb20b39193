"""A run stopped mid-epoch and resumed from its checkpoint trains on exactly the batches, in the
order, of an uninterrupted run (Lightning restarts a loader's iterator on resume: the training
data's loader must carry its position in the checkpoint)."""

import pytest
import pytorch_lightning as pl
import torch

from core.errors import ConfigError
from training.data import IGNORE, Encoded, WindowBatchSampler, make_loader

N = 24  # examples; micro-batches of 2: 12 batches an epoch


def _examples():
    # Example i is the token ids [i, i]: a batch's first column names its examples.
    return [Encoded(input_ids=[i, i], labels=[IGNORE, i]) for i in range(N)]


class _Toy(pl.LightningModule):
    def __init__(self, seen: list, accumulate: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = seen
        self.accumulate = accumulate

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"][:, 0].tolist())
        return (self.w * batch["input_ids"].float()).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        # A new loader per trainer, as a restarted process builds one.
        return make_loader(_examples(), 2, pad_id=0, seed=3, accumulate=self.accumulate)


class _Preempted(Exception):
    pass


class _KillAfter(pl.Callback):
    """Checkpoints after `k` batches, then dies (a preemption right after a periodic save)."""

    def __init__(self, k: int, path):
        self.k, self.path = k, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.fit_loop.total_batch_idx + 1 == self.k:
            trainer.save_checkpoint(self.path)
            raise _Preempted


def _trainer(epochs: int, accumulate: int, callbacks=()):
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # as training.run: the sampler is the data's own
        callbacks=list(callbacks),
    )


def _fit(seen, epochs, accumulate, callbacks=(), ckpt_path=None):
    _trainer(epochs, accumulate, callbacks).fit(_Toy(seen, accumulate), ckpt_path=ckpt_path)


# Killed mid-epoch; at a step boundary with accumulation; after an epoch's last batch; in epoch 2.
@pytest.mark.parametrize("accumulate,k", [(1, 5), (2, 6), (1, 12), (1, 15)])
def test_resumed_run_sees_the_uninterrupted_batches(tmp_path, accumulate, k):
    whole: list = []
    _fit(whole, 2, accumulate)
    assert len(whole) == 2 * N // 2
    assert sorted(i for b in whole[:12] for i in b) == list(range(N))

    ckpt = tmp_path / "last.ckpt"
    before: list = []
    with pytest.raises(_Preempted):
        _fit(before, 2, accumulate, callbacks=[_KillAfter(k, ckpt)])
    assert len(before) == k
    after: list = []
    _fit(after, 2, accumulate, ckpt_path=str(ckpt))
    assert before + after == whole


def test_resuming_from_an_epoch_end_starts_the_next_epoch(tmp_path):
    """The final checkpoint of a finished run (training.run saves one) resumes a longer run at
    the next epoch's first batch, with that epoch's order."""
    whole: list = []
    _fit(whole, 2, 1)
    first: list = []
    trainer = _trainer(1, 1)
    trainer.fit(_Toy(first, 1))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    more: list = []
    _fit(more, 2, 1, ckpt_path=str(tmp_path / "last.ckpt"))
    assert first + more == whole


def test_sampler_state_round_trip():
    tokens = list(range(1, 11))
    a = WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=7)
    a.sampler.set_epoch(1)
    epoch = list(a)
    it = iter(a)
    done = [next(it), next(it)]
    state = a.state_dict()
    assert state == {"epoch": 1, "batches": 2, "seed": 7}

    b = WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=7)
    b.load_state_dict(state)
    assert b.state_dict() == state  # restored, not yet iterated
    rest = list(b)
    assert done + rest == epoch  # the step totals too: they are part of each key
    assert b.state_dict()["batches"] == len(b) == 5
    assert list(b) == epoch  # the restored position holds for one pass only

    c = WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=7)
    c.load_state_dict(state)
    c.sampler.set_epoch(2)  # Lightning moved on to another epoch: nothing to skip
    assert len(list(c)) == 5

    with pytest.raises(ConfigError, match="seed"):
        WindowBatchSampler(tokens, micro_batch=2, accumulate=2, seed=8).load_state_dict(state)


def test_the_loader_is_what_lightning_checkpoints():
    """Lightning saves and restores the state of loaders that are `_Stateful`."""
    from lightning_fabric.utilities.types import _Stateful

    loader = make_loader(_examples(), 2, pad_id=0, seed=3)
    assert isinstance(loader, _Stateful)
    it = iter(loader)
    next(it)
    assert loader.state_dict() == {"epoch": 0, "batches": 1, "seed": 3}
