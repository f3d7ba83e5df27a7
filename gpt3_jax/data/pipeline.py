"""Training and evaluation batches from a prepared token stream, built with grain.

Examples are windows of ``seq_len + 1`` tokens: ``inputs`` are the first ``seq_len`` and
``targets`` the last ``seq_len`` (the next token at every position). Window ``i`` starts at token
``i * seq_len``, so windows do not overlap except for the one token a window's target shares with
the next window's input: every token is trained on once per epoch. (Windows at every offset would
give ``seq_len`` times more, nearly identical, examples; a random offset per epoch would make the
epoch length vary. Fixed windows keep "one epoch" exact and the order easy to reason about.)

The training order is one infinite sequence of rows: epoch ``e`` is a permutation of all windows
(grain's index shuffle, its seed derived from ``seed`` and ``e``), and epochs follow each other
without a gap, so a global batch may straddle two epochs. Global batch ``b`` is rows
``[b·B, (b+1)·B)``; JAX process ``p`` of ``P`` gets the contiguous rows
``[b·B + p·B/P, b·B + (p+1)·B/P)``, so the processes' slices, concatenated, are the one-process batch
whatever ``P``. The iterator's state is the number of rows consumed (plus what must not change),
which is why it restores exactly and stays valid when the number of processes or grain workers
changes between save and restore.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt3_jax.data.prepared import PreparedData, TokenStream
from gpt3_jax.errors import UserError

if TYPE_CHECKING:
    import jax
    from jax.sharding import Mesh

Batch = dict[str, np.ndarray]
_STATE_VERSION = 1


class Windows:
    """Random-access windows of ``seq_len + 1`` tokens over a stream: ``[i]`` → int32 [seq_len + 1].

    Indices past the end wrap around (grain's shuffle asks for ``i + epoch · len``).
    """

    def __init__(self, stream: TokenStream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self._n = (len(stream) - 1) // seq_len

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> np.ndarray:
        start = (int(i) % self._n) * self.seq_len
        return self.stream.read(start, start + self.seq_len + 1)


def _split(rows: np.ndarray) -> Batch:
    """[b, seq_len + 1] windows → inputs and targets, each [b, seq_len] int32."""
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}


def _local_rows(batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise UserError(
            f"global batch size {batch_size} is not divisible by the {process_count} JAX processes; "
            f"set train.batch_size to a multiple of {process_count}"
        )
    return batch_size // process_count


def _windows(stream: TokenStream, seq_len: int, split: str, fraction_hint: str) -> Windows:
    if len(stream) < seq_len + 1:
        raise UserError(
            f"the {split} split has {len(stream)} tokens, fewer than one window of seq_len+1={seq_len + 1}; "
            f"{fraction_hint}, use more text, or a shorter model.n_ctx"
        )
    return Windows(stream, seq_len)


def _shuffle_seed(seed: int) -> int:
    # grain reshuffles epoch e with seed + e; hashing the user's seed first keeps seed 1's first
    # epoch from being seed 0's second
    return int(np.random.SeedSequence([seed, 0x6770_7433]).generate_state(1)[0])


class TrainIterator(Iterator[Batch]):
    """Endless process-local training batches; ``get_state``/``set_state`` save and restore it."""

    def __init__(
        self,
        prepared: PreparedData,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        process_index: int,
        process_count: int,
        workers: int,
        prefetch: int,
    ):
        self._local = _local_rows(batch_size, process_index, process_count)
        self._windows = _windows(prepared.train_stream(), seq_len, "train", "lower data.val_fraction")
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self._p, self._np = process_index, process_count
        self._workers, self._prefetch = workers, prefetch
        self._tokenizer = prepared.tokenizer.checksum
        self._rows = 0  # rows of the global order consumed so far, by all processes together
        self._it: Iterator[Batch] | None = None

    def _build(self) -> Iterator[Batch]:
        import grain

        chunks_done = self._rows // self._local  # local-sized chunks of rows already consumed
        ds = (
            grain.MapDataset.source(self._windows)
            .shuffle(seed=_shuffle_seed(self.seed))
            .repeat()  # index i + e·n → epoch e's permutation: reshuffled every epoch
            .batch(self._local)  # chunk c = rows [c·B/P, (c+1)·B/P)
            .slice(slice(chunks_done + self._p, None, self._np))  # this process's chunk of each batch
            .map(_split)
        )
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(
                num_threads=1 if self._workers else 2, prefetch_buffer_size=max(self._prefetch, 1)
            )
        )
        if self._workers:
            from absl import flags

            # grain reads an absl flag in mp_prefetch before anyone parsed flags (google/grain#1355)
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._workers, per_worker_buffer_size=max(self._prefetch, 1)
                )
            )
        return iter(it_ds)

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = self._build()
        batch = next(self._it)
        self._rows += self.batch_size
        return batch

    @property
    def n_windows(self) -> int:
        """Windows in one epoch."""
        return len(self._windows)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: rows consumed, plus the settings that define the order."""
        return {
            "version": _STATE_VERSION,
            "rows": self._rows,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "n_windows": len(self._windows),
            "tokenizer_sha256": self._tokenizer,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from ``get_state``, possibly of another process count)."""
        state = json.loads(json.dumps(state))  # accept what a JSON round trip gives back
        mine = self.get_state()
        for key in ("version", "seed", "seq_len", "n_windows", "tokenizer_sha256"):
            if state.get(key) != mine[key]:
                raise UserError(
                    f"the saved data-iterator state has {key}={state.get(key)!r} but this run has "
                    f"{mine[key]!r}; resume with the same data and settings, or start a new run"
                )
        rows = int(state["rows"])
        if rows % self._local:
            raise UserError(
                f"the saved data position ({rows} rows) is not a whole number of {self._local}-row batch "
                "slices; resume with the batch size the run was saved with"
            )
        self.close()
        self._rows = rows

    def close(self) -> None:
        """Stop grain's worker processes, if any (they also stop when the iterator is collected)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


def train_iterator(
    prepared: PreparedData,
    *,
    batch_size: int,
    seq_len: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    prefetch: int = 2,
) -> TrainIterator:
    """Endless shuffled training batches for this process.

    ``next(it)`` → ``{"inputs", "targets"}``, each int32 [batch_size / process_count, seq_len]: this
    process's contiguous rows of the global batch. ``workers`` > 0 prefetches in that many grain
    worker processes; ``prefetch`` batches are buffered (per worker).
    """
    return TrainIterator(
        prepared,
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        prefetch=prefetch,
    )


def eval_batches(
    prepared: PreparedData,
    *,
    batch_size: int,
    seq_len: int,
    n_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """``n_batches`` validation batches, in stream order (no shuffle), this process's rows of each.

    Row ``r`` of the global order is validation window ``r mod n`` (a short split is cycled).
    """
    local = _local_rows(batch_size, process_index, process_count)
    windows = _windows(prepared.val_stream(), seq_len, "validation", "raise data.val_fraction")
    for b in range(n_batches):
        first = b * batch_size + process_index * local
        yield _split(np.stack([windows[r] for r in range(first, first + local)]))


def to_device(batch: Batch, mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local numpy rows → global jax Arrays, batch split over the mesh's data axes."""
    import jax

    from gpt3_jax.sharding import batch_sharding

    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v) for k, v in batch.items()
    }
