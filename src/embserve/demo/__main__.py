"""``python -m embserve.demo``: build the demo model and show one request and its answer."""

from __future__ import annotations

import textwrap

import numpy as np

import embserve as es
from embserve.demo import build_demo_model, demo_request


def main() -> None:
    """Print the model, a request and the looked-up embeddings."""
    model, feature_config = build_demo_model()
    print(f"embserve {es.__version__}: TPUEmbeddingForServing on the CPU\n")
    print("tables:")
    for table, values in model.embedding_tables.items():
        slots = [s for s in model.variables[table.name] if s != "parameters"]
        print(
            f"  {table.name:<11} {values.shape[0]:>5} x {values.shape[1]}  "
            f"combiner={table.combiner:<5} slots={slots}"
        )
    features, weights = demo_request()
    print("\nrequest:")
    for name, value in features.items():
        w = weights[name]
        print(f"  {name:<17} {value!r}" + (f"  weights={w.values.tolist()}" if w else ""))
    result = model(features, weights)
    print("\nresult:")
    with np.printoptions(precision=3, suppress=True, linewidth=100):
        for name, value in result.items():
            cfg = feature_config[name]
            kind = "sequence" if cfg.max_sequence_length else cfg.table.combiner
            print(f"  {name} {value.shape} ({kind}):")
            print(textwrap.indent(str(value), "    "))
    try:
        model({"user_id": np.array([7, 1000])})
    except es.IdOutOfRangeError as e:
        print(f"\nan out-of-range id is refused, not read:\n  IdOutOfRangeError: {e}")


if __name__ == "__main__":
    main()
