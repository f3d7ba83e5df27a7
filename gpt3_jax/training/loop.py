"""The trainer: ``train(cfg) -> summary``, what ``gpt3-jax train`` runs.

One readable function: mesh and checks → data → state (resumed, fine-tuned or fresh, born
sharded) → the jitted step in a loop → metrics, evals, checkpoints, a sample at the end.

The host never waits for the device between steps except at log, eval and checkpoint steps:
each step's metrics stay on device until then. Batches are pulled synchronously just before the
step that uses them, so the data iterator's state saved with a checkpoint is exactly "the batches
the saved parameters have seen", and a resume replays the same batches bit for bit.

Stopping: SIGTERM or SIGINT finishes the current step, saves, and returns with ``stopped_by`` set
(the CLI exits 0 after SIGTERM — a preemption is not a failure — and 130 after SIGINT). A second
SIGINT kills at once. A NaN or Inf loss or gradient norm raises ``DivergedError`` before anything
is saved from the bad state, so the last checkpoint on disk stays a good one. A checkpoint that
cannot be written (a full disk) raises ``checkpoint.SaveError`` (the CLI exits 4); the older ones
stay intact. A damaged latest checkpoint is skipped at resume (``Checkpointer.restore``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from gpt3_jax import checkpoint, distributed, paths
from gpt3_jax.checkpoint import Checkpointer, load_init_params
from gpt3_jax.config import Config, dump_config
from gpt3_jax.errors import UserError
from gpt3_jax.evaluation.run import load_tasks, task_metrics
from gpt3_jax.sampling import LanguageModel
from gpt3_jax.training.metrics import MetricsWriter, mfu, peak_flops
from gpt3_jax.training.optim import check_ramp, ramp_micro_batches
from gpt3_jax.training.preflight import preflight
from gpt3_jax.training.setup import setup
from gpt3_jax.training.state import init_state
from gpt3_jax.training.step import jit_eval_step, jit_train_step


class DivergedError(UserError):
    """The loss or gradient norm became NaN/Inf; the CLI exits 3."""


class _StopSignals:
    """SIGTERM/SIGINT set ``received`` instead of killing: the loop saves and returns."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts for real
            signal.signal(signal.SIGINT, signal.default_int_handler)
        tqdm.write(f"received {self.received}: finishing this step, saving a checkpoint, then stopping")
        distributed.forward_to_peers(signum)  # several processes: all of them stop at one step

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in distributed.stop_signals():
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _Profiler:
    """A ``jax.profiler`` trace of steps [start, stop] into ``WORKDIR/plugins/profile/<run>/`` (every
    process traces its own host): ``<host>.xplane.pb`` for TensorBoard's profile plugin and
    ``perfetto_trace.json.gz`` for ui.perfetto.dev. A ``gs://`` workdir gets the trace written
    locally and uploaded when it stops (``paths.staged_dir``)."""

    def __init__(self, steps: tuple[int, ...], workdir: Any, main: bool):
        self.start, self.stop = steps if steps else (0, -1)
        self.workdir, self.main = workdir, main
        self.staged: contextlib.ExitStack | None = None

    def before(self, step: int) -> None:
        if step == self.start:
            self.staged = contextlib.ExitStack()
            where = self.staged.enter_context(paths.staged_dir(self.workdir))
            jax.profiler.start_trace(str(where), create_perfetto_trace=True)

    def after(self, step: int, metrics: Any) -> None:
        if self.staged is not None and step == self.stop:
            jax.block_until_ready(metrics)  # the traced steps have run to their end
            self.close()

    def close(self) -> None:
        if self.staged is not None:
            jax.profiler.stop_trace()
            self.staged.close()  # uploads a staged trace
            self.staged = None
            if self.main:
                tqdm.write(f"profile of steps {self.start}-{self.stop}: {self.workdir}/plugins/profile")


def _global_batch(micro: list[dict[str, np.ndarray]], shardings: dict[str, Any]) -> dict[str, jax.Array]:
    """m process-local micro-batches [b_local, t] → global arrays [m, b, t], batch over data axes."""
    return {
        k: jax.make_array_from_process_local_data(shardings[k], np.stack([mb[k] for mb in micro]))
        for k in ("inputs", "targets")
    }


def _fetch(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Bring the steps' metrics to the host (the one sync point): mean loss, last lr and norm."""
    host = jax.device_get(pending)
    return {
        "loss": float(np.mean([m["loss"] for m in host])),
        "grad_norm": float(host[-1]["grad_norm"]),
        "max_grad_norm": float(max(m["grad_norm"] for m in host)),
        "lr": float(host[-1]["lr"]),
    }


def _check_finite(values: dict[str, float], step: int, last_good: int | None, root: paths.Path) -> None:
    if all(math.isfinite(values[k]) for k in ("loss", "max_grad_norm", "param_norm") if k in values):
        return
    where = (
        f"the last good checkpoint is step {last_good} in {root}" if last_good else "no checkpoint was saved"
    )
    raise DivergedError(
        f"training diverged by step {step} (loss {values['loss']}, grad norm {values['max_grad_norm']}, "
        f"parameter norm {values.get('param_norm', 'not checked')}); "
        f"{where}; lower optim.lr, raise optim.warmup_tokens, or keep optim.grad_clip on"
    )


def _log_line(step: int, r: dict[str, Any]) -> str:
    line = f"step {step}: loss {r['loss']:.4f}, lr {r['lr']:.2e}, grad norm {r['grad_norm']:.3f}"
    if "tokens_per_sec" in r:
        line += f", {r['tokens_per_sec']:,.0f} tokens/s, {r['step_time_s'] * 1e3:.0f} ms/step"
    if r.get("mfu") is not None:
        line += f", MFU {100 * r['mfu']:.1f}%"
    return line


def _evaluate(
    cfg: Config, data: Any, eval_fn: Any, params: Any, shardings: dict[str, Any], micro: int
) -> float:
    from gpt3_jax.data import eval_batches

    batches = eval_batches(
        data,
        batch_size=micro,
        seq_len=cfg.model.n_ctx,
        n_batches=cfg.train.eval_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    losses = [
        eval_fn(params, {k: jax.make_array_from_process_local_data(shardings[k], b[k]) for k in b})
        for b in batches
    ]
    return float(jnp.mean(jnp.stack(losses)))


def _sample(cfg: Config, graphdef: Any, params: Any, tokenizer: Any, mesh: Any) -> str | None:
    """A short sample from the current parameters, if the sampling package is there."""
    try:
        from gpt3_jax.sampling.methods import make_method
        from gpt3_jax.sampling.sampler import Sampler
    except ImportError:
        return None
    model = nnx.merge(graphdef, params)
    try:
        sampler = Sampler(model, eot_id=tokenizer.eot_id, mesh=mesh)
        method = make_method(temperature=0.8)
        result = sampler.generate(
            [[tokenizer.eot_id]], cfg.train.sample_tokens, method=method, seed=cfg.run.seed
        )
    except Exception as exc:  # noqa: BLE001 - a sample is a courtesy: never fail a finished run over it
        return f"<no sample: {type(exc).__name__}: {exc}>"
    # the model's vocabulary may be padded past the tokenizer's: ids beyond it have no text
    return tokenizer.decode([i for i in result.ids[0] if i < tokenizer.vocab_size])


def _with_init_tokenizer(cfg: Config) -> Config:
    """Fine-tuning keeps the token ids of the run it starts from: use its tokenizer when the
    config names none."""
    if not cfg.train.init_from or cfg.data.tokenizer:
        return cfg
    path = checkpoint.tokenizer_path(cfg.train.init_from)
    if path is None:
        return cfg
    return cfg.replace(data=dataclasses.replace(cfg.data, tokenizer=str(path)))


def train(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` in ``cfg.run.workdir``, resuming from its latest checkpoint if there is one.

    Returns a summary: steps, final loss and eval loss, tokens, wall time, ``stopped_by``.
    """
    from gpt3_jax.data import prepare_training_data, train_iterator
    from gpt3_jax.info import count

    t_start = time.perf_counter()
    main = jax.process_index() == 0
    cfg.run.require_workdir()
    workdir = paths.as_path(cfg.run.workdir)
    distributed.check_shared(workdir, "run.workdir")  # several hosts: all must see one workdir
    if cfg.data.cache_dir:
        distributed.check_shared(cfg.data.cache_dir, "data.cache_dir")
    cfg = _with_init_tokenizer(cfg)
    tasks = load_tasks(cfg.train.eval_tasks)  # a bad task file stops us before any work
    s = setup(cfg)  # mesh, rules, optimizer, abstract state, shardings; checks the batch
    check_ramp(cfg)
    preflight(cfg, workdir)  # the workdir, checkpoints and data inputs: before anything is written
    mesh, micro = s.mesh, s.micro

    try:
        ckpt = Checkpointer(workdir, cfg)  # creates the workdir: the first write
    except OSError as exc:  # what the preflight cannot foresee (/proc, a read-only mount as root)
        raise UserError(
            f"run.workdir={workdir} cannot be created ({exc.strerror or exc}); set run.workdir to a "
            "folder you can write in"
        ) from None
    resume = ckpt.latest_step()
    data = prepare_training_data(cfg, workdir, process_index=jax.process_index(), progress=progress and main)
    if main:
        ckpt.save_tokenizer(data.tokenizer)
        paths.write_text(workdir / "config.yaml", dump_config(cfg))
    it = train_iterator(
        data,
        batch_size=micro,
        seq_len=cfg.model.n_ctx,
        seed=cfg.run.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        workers=cfg.data.workers,
        prefetch=cfg.data.prefetch,
    )

    info = count(cfg.model)
    device_kind, tokens_per_micro = jax.devices()[0].device_kind, micro * cfg.model.n_ctx
    if main and peak_flops(device_kind) is None:
        print(f"MFU is not reported: no peak FLOP/s known for device kind {device_kind!r}")

    params = None
    if resume is None and cfg.train.init_from:
        params = load_init_params(cfg.train.init_from, cfg, mesh=mesh, rules=s.rules)
    with jax.set_mesh(mesh):
        if resume is not None:
            state, data_state, resume = ckpt.restore(resume, mesh=mesh, rules=s.rules, tx=s.tx)
            it.set_state(data_state)
            where = f"resumed from step {resume}"
        else:
            state = init_state(cfg, s.tx, s.shardings, params=params)
            where = f"parameters from {cfg.train.init_from}" if params is not None else "new run"
        step, tokens_seen = int(state.step), int(state.tokens)  # one sync, before the loop
        step_fn = jit_train_step(s)
        param_norm = jax.jit(optax.global_norm)
        eval_fn = jit_eval_step(s) if cfg.train.eval_every else None
        writer = MetricsWriter(
            workdir, resume_step=step, enabled=main, trackers=cfg.run.trackers, config=cfg.to_dict()
        )
        if main:
            print(
                f"{where}: {workdir}, mesh {dict(mesh.shape)}, {info.params:,} parameters, "
                f"batch {cfg.train.batch_size}×{cfg.model.n_ctx} tokens "
                f"in {cfg.train.micro_batches} micro-batch(es)"
            )

        start_step, last_saved = step, resume
        summary: dict[str, Any] = {"loss": None, "eval_loss": None, "stopped_by": None}
        pending: list[dict[str, jax.Array]] = []
        interval_steps = interval_tokens = 0
        compile_s: float | None = None
        bar = tqdm(total=cfg.train.steps, initial=step, desc="train", disable=not (progress and main))
        profiler = _Profiler(cfg.train.profile_steps, workdir, main)
        try:
            with _StopSignals() as signals:
                t_last = time.perf_counter()
                stopping: str | None = None
                while step < cfg.train.steps and stopping is None:
                    m = ramp_micro_batches(cfg, tokens_seen)
                    profiler.before(step + 1)
                    state, metrics = step_fn(
                        state, _global_batch([next(it) for _ in range(m)], s.train_batch)
                    )
                    step += 1
                    profiler.after(step, metrics)
                    tokens_seen += m * tokens_per_micro
                    pending.append(metrics)
                    bar.update(1)
                    if compile_s is None:  # the first step compiles: time it apart from the rest
                        jax.block_until_ready(metrics)
                        compile_s, t_last = time.perf_counter() - t_last, time.perf_counter()
                    else:
                        interval_steps += 1
                        interval_tokens += m * tokens_per_micro

                    stopping = distributed.synced_stop(step, signals.received)
                    last = step == cfg.train.steps
                    log_now = step % cfg.train.log_every == 0 or last
                    eval_now = bool(cfg.train.eval_every) and (step % cfg.train.eval_every == 0 or last)
                    every = cfg.checkpoint.every
                    save_now = (every and step % every == 0) or last or stopping is not None
                    if not (log_now or eval_now or save_now):
                        continue

                    values = _fetch(pending)  # syncs; a NaN stops us before it can be saved
                    _check_finite(values, step, last_saved, ckpt.root)
                    if log_now:
                        dt = time.perf_counter() - t_last
                        record: dict[str, Any] = {**values, "tokens": tokens_seen, "micro_batches": m}
                        if interval_steps:
                            tps = interval_tokens / dt
                            record |= {"tokens_per_sec": tps, "step_time_s": dt / interval_steps}
                            u = mfu(info.model_flops_per_token, tps, device_kind, mesh.size)
                            if u is not None:
                                record["mfu"] = u
                        if compile_s is not None and step - start_step <= cfg.train.log_every:
                            record["compile_s"] = compile_s
                        writer.write(step, record)
                        if main:
                            tqdm.write(_log_line(step, record))
                        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                        summary["loss"] = values["loss"]
                        pending, interval_steps, interval_tokens = [], 0, 0
                    if eval_now and eval_fn is not None:
                        eval_loss = _evaluate(cfg, data, eval_fn, state.params, s.eval_batch, micro)
                        perplexity = math.exp(min(eval_loss, 700.0))
                        writer.write(step, {"eval_loss": eval_loss, "eval_perplexity": perplexity})
                        if main:
                            tqdm.write(f"step {step}: eval loss {eval_loss:.4f}, perplexity {perplexity:.2f}")
                        summary["eval_loss"] = eval_loss
                        if tasks:  # every process scores: the parameters are sharded over all of them
                            lm = LanguageModel(cfg, nnx.merge(s.graphdef, state.params), data.tokenizer, mesh)
                            scores = task_metrics(lm, tasks)
                            writer.write(step, scores)
                            if main:
                                tqdm.write(
                                    f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
                                )
                    if cfg.train.sample_every and step % cfg.train.sample_every == 0:
                        # every process samples: the parameters are sharded over all of them
                        text = _sample(cfg, s.graphdef, state.params, data.tokenizer, mesh)
                        if main:
                            tqdm.write(f"step {step} sample: {text!r}")
                    if save_now:
                        # the loss saw the parameters before this step's update; check the update too
                        values["param_norm"] = float(param_norm(state.params))
                        _check_finite(values, step, last_saved, ckpt.root)
                        ckpt.save(state, it.get_state())
                        last_saved = step
                    t_last = time.perf_counter()  # evals and saves are not training time
                summary["stopped_by"] = stopping
        finally:
            profiler.close()
            bar.close()
            try:
                ckpt.close()  # waits for the last async save: it is complete on disk when we return
            finally:
                writer.close()
                it.close()

        if summary["stopped_by"] is None and step > start_step and cfg.train.sample_tokens:
            text = _sample(cfg, s.graphdef, state.params, data.tokenizer, mesh)  # on every process, as above
            if text is not None:
                if main:
                    print(f"sample: {text!r}")
                summary["sample"] = text
    summary |= {
        "workdir": str(workdir),
        "start_step": start_step,
        "steps": step,
        "tokens": tokens_seen,
        "checkpoint_step": last_saved,
        "wall_s": time.perf_counter() - t_start,
    }
    if main:
        print(
            f"done: step {step}, loss {summary['loss']}, eval loss {summary['eval_loss']}, "
            f"{summary['wall_s']:.1f} s"
        )
    return summary
