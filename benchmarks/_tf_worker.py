"""The TensorFlow contestant of ``benchmarks/run.py``, run by the interpreter ``--tf-python`` names.

What it does: builds ``tf.tpu.experimental.embedding.TPUEmbeddingForServing`` objects with the
same table and feature configs as embserve's contestant, restores the benchmark's checkpoint into
them (``tf.train.Checkpoint(embedding=mid).restore(prefix)`` before ``build()``, so the variables
are created from the checkpoint values instead of being initialised first), and answers the same
requests as run.py's other workers: ``prepare`` (convert inputs to ``tf.Tensor`` /
``tf.RaggedTensor``, call every batch once, return the outputs for checking), ``run`` (time calls),
``drop`` and ``quit``.

Why a separate file: the TF venv has neither torch nor embserve's dependencies, so this module
imports only the standard library, numpy and (inside ``main``) TensorFlow. Requests and replies are
pickled plain data (dicts, lists, numpy arrays) over the process's stdin and a duplicate of its
original stdout; file descriptor 1 is pointed at stderr first, so nothing TensorFlow prints can
corrupt the protocol.
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

DIM = 64


class _Channel:
    """``send`` / ``recv`` of pickled objects over two binary streams (a pipe pair)."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self.reader, self.writer = reader, writer

    def send(self, obj: Any) -> None:
        """Pickle ``obj`` and flush it to the parent."""
        pickle.dump(obj, self.writer, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.flush()

    def recv(self) -> Any:
        """The parent's next request."""
        return pickle.load(self.reader)


def _time_calls(call: Callable[[Any], Any], inputs: list[Any], reps: int, start: int) -> list[int]:
    """Times ``reps`` calls on batches ``start, start + 1, …`` (cycling); ns per call.

    The same protocol as run.py's ``_time_calls``: one untimed call first, GC paused.
    """
    call(inputs[(start - 1) % len(inputs)])
    times: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(reps):
            batch = inputs[(start + i) % len(inputs)]
            t0 = time.perf_counter_ns()
            out = call(batch)
            t1 = time.perf_counter_ns()
            del out
            times.append(t1 - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


class _TFContestant:
    """TF ForServing, ``tf.function``-wrapped and eager, on tables restored from the checkpoint."""

    def __init__(self, prefix: str, vocab: dict[str, int]) -> None:
        import tensorflow as tf

        self.tf = tf
        self.api = tf.tpu.experimental.embedding
        self.prefix = prefix
        self.vocab = vocab
        self.mids: dict[tuple[Any, ...], Any] = {}
        self.setup_s: dict[str, float] = {}
        self.versions = {
            "tensorflow": tf.__version__,
            # 0 = TensorFlow's default: one intra-op thread per core
            "TF intra-op threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
        }

    def _mid(self, workload: dict[str, Any]) -> tuple[Any, list[str]]:
        """The serving object for a workload's configs, restored once and shared by workloads
        with the same tables, combiner and sequence length; returns it and its feature keys."""
        api, tf = self.api, self.tf
        kind, names = workload["kind"], list(workload["tables"])
        signature = (kind, tuple(names), workload["combiner"], workload["seq_len"])
        keys = [f"f{i:02d}" for i in range(len(names))] if kind == "onehot" else ["f"]
        if signature in self.mids:
            return self.mids[signature], keys
        configs = {
            name: api.TableConfig(
                vocabulary_size=self.vocab[name],
                dim=DIM,
                combiner=workload["combiner"],
                name=name,
            )
            for name in names
        }
        if kind == "onehot":
            features = {
                key: api.FeatureConfig(table=configs[name])
                for key, name in zip(keys, names, strict=True)
            }
        else:
            features = {
                "f": api.FeatureConfig(
                    table=configs[names[0]],
                    max_sequence_length=workload["seq_len"] if kind == "sequence" else 0,
                )
            }
        mid = api.TPUEmbeddingForServing(features, optimizer=None)
        t0 = time.perf_counter()
        status = tf.train.Checkpoint(embedding=mid).restore(self.prefix)
        t1 = time.perf_counter()
        mid.build()  # restore-on-create: the variables start as the checkpoint's values
        t2 = time.perf_counter()
        status.expect_partial()  # the checkpoint holds the other workloads' tables too
        label = (
            f"{kind}: {len(names)} table(s) {', '.join(names[:2])}{'…' if len(names) > 2 else ''}"
            f", combiner {workload['combiner']}"
        )
        self.setup_s[f"restore() + build(), {label}"] = t2 - t0
        self.setup_s[f"  of which restore() call, {label}"] = t1 - t0
        self.mids[signature] = mid
        return mid, keys

    def prepare(
        self, workload: dict[str, Any]
    ) -> dict[str, tuple[Callable[[Any], Any], list[Any]]]:
        """Variants ``TF tf.function`` and ``TF eager``: (call, inputs) each."""
        tf = self.tf
        mid, keys = self._mid(workload)
        kind = workload["kind"]
        inputs: list[Any] = []
        if kind == "onehot":
            for batch in workload["batches"]:
                features = {k: tf.constant(ids) for k, ids in zip(keys, batch, strict=True)}
                inputs.append((features, None))
        else:
            for x in workload["batches"]:
                splits = tf.constant(x["row_splits"])
                ids = tf.RaggedTensor.from_row_splits(tf.constant(x["values"]), splits)
                weights = (
                    None
                    if x["weights"] is None
                    else {"f": tf.RaggedTensor.from_row_splits(tf.constant(x["weights"]), splits)}
                )
                inputs.append(({"f": ids}, weights))

        # reduce_retracing: ragged batches differ in length; one generalised trace serves all.
        @tf.function(reduce_retracing=True)
        def graph(features: Any, weights: Any) -> Any:
            return mid(features, weights)

        def traced(batch: tuple[Any, Any]) -> Any:
            return graph(*batch)

        def eager(batch: tuple[Any, Any]) -> Any:
            return mid(*batch)

        return {"TF tf.function": (traced, inputs), "TF eager": (eager, inputs)}

    @staticmethod
    def to_numpy(kind: str, out: Any) -> np.ndarray:
        """A result as run.py's canonical array (one-hot: stacked [features, B, 64])."""
        if kind == "onehot":
            return np.stack([out[k].numpy() for k in sorted(out)])
        return np.asarray(out["f"].numpy())


def main() -> int:
    """Serve run.py's requests until ``quit`` or end of input."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # whatever TensorFlow prints goes to stderr
    channel = _Channel(sys.stdin.buffer, os.fdopen(out_fd, "wb"))
    started = time.perf_counter()
    _, prefix, vocab = channel.recv()  # ("init", checkpoint prefix, {table name: rows})
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        contestant = _TFContestant(prefix, vocab)
    except ImportError as exc:
        channel.send(("unavailable", f"{type(exc).__name__}: {exc}"))
        return 0
    channel.send(
        ("ready", {"start_s": time.perf_counter() - started, "versions": contestant.versions})
    )
    prepared: dict[str, dict[str, tuple[Callable[[Any], Any], list[Any]]]] = {}
    while True:
        try:
            request = channel.recv()
        except EOFError:
            break
        try:
            if request[0] == "quit":
                break
            if request[0] == "prepare":
                workload = request[1]
                t0 = time.perf_counter()
                variants = contestant.prepare(workload)
                prep_s = time.perf_counter() - t0
                outputs, first_call_s = {}, {}
                for name, (call, inputs) in variants.items():
                    t0 = time.perf_counter()
                    first = call(inputs[0])  # includes tracing for tf.function
                    first_call_s[name] = time.perf_counter() - t0
                    n_checked = workload.get("n_checked") or len(inputs)
                    outs = [first] + [call(x) for x in inputs[1:n_checked]]
                    outputs[name] = [contestant.to_numpy(workload["kind"], o) for o in outs]
                prepared[workload["key"]] = variants
                reply: Any = {
                    "outputs": outputs,
                    "prep_s": prep_s,
                    "first_call_s": first_call_s,
                    "versions": contestant.versions,
                    "setup_s": dict(contestant.setup_s),
                }
            elif request[0] == "run":
                _, key, variant, reps, start = request
                call, inputs = prepared[key][variant]
                reply = _time_calls(call, inputs, reps, start)
            elif request[0] == "drop":
                prepared.pop(request[1], None)
                reply = None
            else:
                raise ValueError(f"unknown request {request[0]!r}")
            channel.send(("ok", reply))
        except Exception:
            channel.send(("error", traceback.format_exc()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
