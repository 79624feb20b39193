"""SFT data: records -> token ids with the student's chat template, loss on response tokens only.

The prompt is the user turn rendered with `add_generation_prompt=True` (what the model sees at
inference, and what evaluation uses); the labels are -100 on every prompt and padding position.
Nothing is packed; over-long examples are truncated at `cutoff_len` and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from core.errors import ConfigError, DataError
from core.records import Record, query_text

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


@dataclass
class EncodeStats:
    counts: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, int]:
        return {
            k: self.counts.get(k, 0)
            for k in ("kept", "truncated", "dropped_empty_output", "dropped_prompt_too_long")
        }


def ensure_chat_template(tokenizer: Any, fallback: str | None) -> None:
    if getattr(tokenizer, "chat_template", None):
        return
    if fallback:
        tokenizer.chat_template = fallback
        return
    raise ConfigError(
        "the student's tokenizer has no chat template; set train.chat_template to a Jinja template "
        "(the same one evaluation will use), or pick a chat/instruct student"
    )


def encode_record(tokenizer: Any, record: Record, cutoff_len: int) -> tuple[Encoded | None, str]:
    answer = record.get("output") or ""
    if not answer.strip():
        return None, "dropped_empty_output"
    user = [{"role": "user", "content": query_text(record)}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ConfigError(
            "the chat template renders the user turn differently with and without the answer, so "
            "the prompt/response boundary is ambiguous; set train.chat_template"
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) >= cutoff_len:
        return None, "dropped_prompt_too_long"
    ids = prompt_ids + answer_ids
    status = "truncated" if len(ids) > cutoff_len else "kept"
    labels = [IGNORE] * len(prompt_ids) + answer_ids
    return Encoded(ids[:cutoff_len], labels[:cutoff_len]), status


def encode_all(
    tokenizer: Any, records: list[Record], cutoff_len: int
) -> tuple[list[Encoded], EncodeStats]:
    stats, out = EncodeStats(), []
    for r in records:
        enc, status = encode_record(tokenizer, r, cutoff_len)
        stats.counts[status] += 1
        if enc is not None:
            out.append(enc)
    if not out:
        raise DataError(
            f"train: no usable example among {len(records)} records "
            f"({', '.join(f'{k}: {v}' for k, v in stats.counts.items() if v)}); records need a "
            "non-empty output and a prompt shorter than train.cutoff_len"
        )
    return out, stats


def target_tokens(e: Encoded) -> int:
    """Tokens the loss is taken on: labels after the causal shift that are not ignored."""
    return sum(1 for t in e.labels[1:] if t != IGNORE)


class WindowBatchSampler(torch.utils.data.Sampler):
    """Seeded, shuffled micro-batches of indices, grouped by optimizer step: a step takes
    `accumulate` micro-batches on each of the `world` ranks, round-robin. Every index comes with
    the step's target-token count over all its micro-batches and ranks, so the loss can be the
    mean over every token of the step (LLaMA-Factory's / HF Trainer's token-level loss across
    gradient accumulation and devices) rather than a mean of micro-batch means.

    Rank and world size are read when iterating (torch.distributed), so the trainer must not
    replace this sampler (`use_distributed_sampler=False`). With several ranks, a last step's
    micro-batches that do not fill every rank are dropped (all ranks must step together).
    `whole_steps`: an epoch's last, incomplete step is dropped too. DeepSpeed needs it: it steps
    by a micro-batch counter that runs on across epochs, so a partial step would shift every
    later step against these windows. Lightning (without DeepSpeed) steps a partial window at the
    epoch's end, which the step-token count already accounts for.

    The order is `self.sampler`'s (a seeded shuffle), whose `set_epoch` Lightning calls at each
    epoch's start.

    Stateful: `state_dict` is the epoch and how many of its micro-batches were yielded, and after
    `load_state_dict` the next pass over that epoch starts after them. Lightning checkpoints the
    loader's state (ResumableLoader) and restarts its iterator on resume while counting the
    batches done, so without it a resumed epoch replays its first batches and skips its last.
    The count is what the loader took from this sampler: exact with the loader's default
    `num_workers=0` (Lightning does not prefetch from a sized loader); worker processes would
    draw batches ahead. Every rank yields as many micro-batches per epoch, so rank 0's saved
    count holds for all."""

    def __init__(
        self,
        tokens: list[int],
        micro_batch: int,
        accumulate: int,
        seed: int,
        whole_steps: bool = False,
    ):
        self.tokens = tokens
        self.micro_batch = micro_batch
        self.batch_size = micro_batch  # what samplers report (Lightning and DeepSpeed read it)
        self.accumulate = accumulate
        self.whole_steps = whole_steps
        self.sampler = SeededShuffle(len(tokens), seed)
        self.yielded = 0  # micro-batches of the current epoch yielded so far
        self._resume: dict[str, int] | None = None

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _steps(self, world: int) -> list[list[list[int]]]:
        order = list(self.sampler)
        mb = self.micro_batch
        batches = [order[i : i + mb] for i in range(0, len(order), mb)]
        per_step = self.accumulate * world
        whole = per_step if self.whole_steps else world
        if whole > 1:
            batches = batches[: len(batches) - len(batches) % whole]
        return [batches[s : s + per_step] for s in range(0, len(batches), per_step)]

    def __iter__(self):
        rank, world = self._rank_world()
        # Read on the first batch, after Lightning's `set_epoch`: the restored count applies to
        # the restored epoch only (a checkpoint from an epoch's end resumes with the next one).
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        self.yielded = 0
        for step in self._steps(world):
            total = sum(self.tokens[i] for b in step for i in b)
            for b in step[rank::world]:
                self.yielded += 1
                if self.yielded > skip:
                    yield [(i, total) for i in b]

    def state_dict(self) -> dict[str, int]:
        # A restored position not yet iterated is still the position (a save before the first
        # resumed batch).
        at = self._resume or {"epoch": self.sampler.epoch, "batches": self.yielded}
        return {**at, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.sampler.seed) != self.sampler.seed:
            raise ConfigError(
                f"the checkpoint's data order is seed {state['seed']}, this run's seed "
                f"{self.sampler.seed}: resume with the seed it was saved with"
            )
        self.sampler.set_epoch(int(state["epoch"]))
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __len__(self) -> int:
        rank, world = self._rank_world()
        return sum(len(step[rank::world]) for step in self._steps(world))


class SeededShuffle(torch.utils.data.Sampler):
    """A permutation of range(n) from `seed + epoch`: the same on every rank and every rerun."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _Examples(torch.utils.data.Dataset):
    """Examples indexed by (index, step tokens) keys from WindowBatchSampler."""

    def __init__(self, examples: list[Encoded]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Encoded, int]:
        i, total = key
        return self.examples[i], total


def collate(batch: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Pads a micro-batch; items from WindowBatchSampler carry the step's target-token count,
    passed on as `step_tokens`."""
    step_tokens = None
    if batch and isinstance(batch[0], tuple):
        step_tokens = batch[0][1]
        batch = [e for e, _ in batch]
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if step_tokens is not None:
        out["step_tokens"] = torch.tensor(step_tokens)
    return out


class ResumableLoader(torch.utils.data.DataLoader):
    """A loader whose state is its batch sampler's: Lightning saves the state of loaders that have
    `state_dict`/`load_state_dict` in a checkpoint's loop state and restores it on resume, so a
    mid-epoch resume continues after the last batch trained (WindowBatchSampler)."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


def make_loader(
    examples: list[Encoded],
    batch_size: int,
    pad_id: int,
    seed: int,
    accumulate: int = 1,
    whole_steps: bool = False,
):
    tokens = [target_tokens(e) for e in examples]
    sampler = WindowBatchSampler(tokens, batch_size, accumulate, seed, whole_steps)
    return ResumableLoader(
        _Examples(examples), batch_sampler=sampler, collate_fn=lambda b: collate(b, pad_id)
    )


class SFTDataModule(pl.LightningDataModule):
    """The train stage's data: encodes once (counts in `stats`), serves seeded shuffled batches."""

    def __init__(
        self,
        tokenizer: Any,
        records: list[Record],
        cutoff_len: int,
        micro_batch_size: int,
        seed: int,
        accumulate: int = 1,
        whole_steps: bool = False,
    ):
        super().__init__()
        self.accumulate = accumulate
        self.whole_steps = whole_steps
        self.tokenizer = tokenizer
        self.records = records
        self.cutoff_len = cutoff_len
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.examples: list[Encoded] = []
        self.stats = EncodeStats()

    def setup(self, stage: str | None = None) -> None:
        if not self.examples:
            self.examples, self.stats = encode_all(self.tokenizer, self.records, self.cutoff_len)

    def train_dataloader(self):
        self.setup()
        return make_loader(
            self.examples,
            self.micro_batch_size,
            self.tokenizer.pad_token_id,
            self.seed,
            self.accumulate,
            self.whole_steps,
        )
