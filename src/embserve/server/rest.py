"""TensorFlow Serving's REST predict format ↔ embserve lookups.

**Requests** (``POST /v1/models/{name}:predict``) come in TF Serving's two forms::

    {"instances": [{"user": 7, "history": [10, 11, 12]},      # row form: one object per example
                   {"user": 42, "history": [3]}]}
    {"inputs": {"user": [7, 42], "history": [[10, 11, 12], [3]]}}   # columnar: one list per feature

Per feature and example, the value is one of:

================================================  =============================================
``7``                                             one id
``[10, 11, 12]``                                  a bag of ids (combined by the table's
                                                  combiner; a sequence feature's ids in order)
``[[1, 2], [3]]``                                 several bags in one example: the output has
                                                  one combined row per bag, ``[bags, dim]``
``{"ids": [10, 11], "weights": [0.5, 2.0]}``      a weighted bag (``ids`` and ``weights`` of the
                                                  same shape: one id and one weight, a bag, or
                                                  several bags)
================================================  =============================================

A feature whose examples are all single ids is looked up as dense ids; bags (and single ids
mixed with bags, which are bags of one) become an ``es.RaggedTensor``, several bags per example
an ``es.SparseTensor`` of rank 3, padded with empty bags (which give zeros). Weights reach the
lookup only when the client sent some: ``{"ids": [1, 2]}`` alone is the plain bag ``[1, 2]``
(so a sequence feature, which refuses weights, takes it), and unweighted examples in a batch
with weighted ones weigh 1.0, which changes nothing for any combiner. A
request may name any subset of the model's features; every instance must name the same ones.

**Responses** follow the form asked: ``{"predictions": [{"user": [...], "history": [...]},
...]}`` (one object per instance) or ``{"outputs": {"user": [[...], [...]], ...}}``; float32
activations are written by orjson straight from the numpy arrays.

**What a feature takes** is its :class:`embserve.lookup.FeatureSpec`, the rules the lookup
itself follows, made once per codec: single ids are sent as dense ids only to a feature that
accepts them and has no ``output_shape`` (dense ids would ignore it); weights sent to a feature
that accepts none (a sequence feature) and an ``output_shape`` that cannot apply to the batch
are the lookup's own 400s, given while decoding, before any array is built.

**Limits** (:class:`~.config.Limits`) are checked while converting, before anything their
size would allocate: examples per request, ids per request, and output floats per request,
counted per feature from the spec's output shape for the request's shape (``n × dim`` for
dense ids, ``batch × dim`` for one bag per example, ``batch × most bags × dim`` for several,
``batch × max_sequence_length × dim`` for a sequence, ``prod(output_shape) × dim`` with an
output_shape) and summed. Each is a 400 naming the feature and the limit's key.

**Errors** are :class:`RequestError` (status and message, rendered ``{"error": "..."}``): the
message names the feature and the example and says what was expected; a client's value is
quoted as a bounded sketch (3 levels, 40 characters), whatever its size or nesting. Lookup errors
(``es.InputError``, ``es.IdOutOfRangeError``) are mapped by the app, not here.

Conversion is vectorized per feature: ids are only touched inside C loops (``itertools.chain``,
``set(map(type, ...))``, ``np.array``), which together cost about a third of what decoding the
JSON costs; examples are visited one by one in Python only when some are weighted, and to
word an error.
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import numpy as np

import embserve as es
from embserve.lookup import FeatureSpec
from embserve.server import missing_extra
from embserve.server.config import Limits

try:
    import orjson
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise missing_extra(exc) from exc

__all__ = ["DecodedRequest", "FeatureInput", "RequestError", "RestCodec", "json_type"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
#: Answers with more output floats than this are encoded in pieces of about this many floats
#: (:meth:`RestCodec.encode`): orjson holds the GIL for a whole call, ~28 ns per float here
#: (1 M floats: 28 ms; the 8 Mi-float limit: ~230 ms), so one call over a large answer
#: stalls the event loop even from another thread. Between pieces (~2 ms each) the
#: interpreter can switch threads; joining them costs one copy of the JSON.
ENCODE_PIECE_FLOATS = 1 << 16
_SIGNATURES = ("", "serving_default")
_NAME_MAX_HINT = 200  # longer unknown feature names get no "did you mean"
_EXPECTED = (
    'an id (integer), a list of ids, a list of lists of ids, or {"ids": ..., "weights": ...}'
)


class RequestError(Exception):
    """A request the server refuses, with its HTTP status, a message for the client and any
    headers the answer carries (``Retry-After`` on a 503 that load caused)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def json_type(value: Any) -> str:
    """How JSON would call ``value``'s type, for messages ("a string", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a floating-point number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class FeatureInput(NamedTuple):
    """One feature's batch, ready for the lookup.

    Attributes:
        ids: dense ids (int64 ``[batch]``), an ``es.RaggedTensor`` or an ``es.SparseTensor``.
        weights: ``None`` or float32 weights of the same kind and layout as ``ids``.
        num_ids: how many ids (for limits and metrics).
        output_floats: how many floats the lookup returns for it (for limits, and to choose
            where the request runs).
    """

    ids: Any
    weights: Any
    num_ids: int
    output_floats: int


@dataclass
class DecodedRequest:
    """A parsed predict request.

    Attributes:
        columnar: ``True`` for ``"inputs"`` (answer with ``"outputs"``), ``False`` for
            ``"instances"`` (answer with ``"predictions"``).
        batch: the number of instances (row form), or of rows of the first column.
        features: feature name → :class:`FeatureInput`, in request order.
        num_ids: ids, summed over the features.
        output_floats: floats the lookup returns, summed over the features.
    """

    columnar: bool
    batch: int
    features: dict[str, FeatureInput]
    num_ids: int = 0
    output_floats: int = 0

    @property
    def ids(self) -> dict[str, Any]:
        """Feature name → ids, the ``features`` argument of the lookup."""
        return {name: f.ids for name, f in self.features.items()}

    @property
    def weights(self) -> dict[str, Any] | None:
        """Feature name → weights or ``None``; ``None`` when no feature is weighted."""
        if all(f.weights is None for f in self.features.values()):
            return None
        return {name: f.weights for name, f in self.features.items()}

    @property
    def ids_per_feature(self) -> dict[str, int]:
        """Feature name → number of ids."""
        return {name: f.num_ids for name, f in self.features.items()}


# ---------------------------------------------------------------------------------------------
# Array conversion (C loops; the slow scans below run only to word an error)


def _where(name: str, columnar: bool, example: int) -> str:
    return f"feature {name!r}, " + (f"example {example}" if columnar else f"instance {example}")


def _first_bad_id(rows: Sequence[Any], depth: int) -> tuple[int, Any] | None:
    """(example, offending value) of the first non-int64 id; rows hold bags (depth 1) or lists
    of bags (depth 2)."""
    for i, row in enumerate(rows):
        bags = row if depth == 2 else [row]
        for bag in bags:
            for x in bag:
                if type(x) is not int or not _INT64_MIN <= x <= _INT64_MAX:
                    return i, x
    return None


def _describe_bad_id(value: Any) -> str:
    if type(value) is int:
        return f"id {value} does not fit in int64"
    return f"ids must be integers, got {json_type(value)} ({_short(value)})"


#: How much of a client's value a message quotes: 3 levels, 3 items per level, 40 characters.
_SKETCH_DEPTH, _SKETCH_ITEMS, _SKETCH_CHARS = 3, 3, 40


def _short(value: Any) -> str:
    """A short JSON-like quote of a client's value, for messages.

    Bounded in time and size whatever the value: a request can nest lists up to orjson's
    1,024 levels, and ``repr`` or ``orjson.dumps`` of the whole value recursed into a
    ``RecursionError`` (a 500) from about 970 levels, or copied megabytes to keep 40 characters.
    """
    text = _sketch(value, _SKETCH_DEPTH)
    return text if len(text) <= _SKETCH_CHARS else text[: _SKETCH_CHARS - 3] + "..."


def _quote(name: str) -> str:
    """A client's key or name quoted as Python does (``'usr'``), cut to 60 characters."""
    return repr(name) if len(name) <= 60 else repr(name[:57]) + "..."


def _sketch(value: Any, depth: int) -> str:
    if isinstance(value, str):
        cut = value[: _SKETCH_CHARS + 1]
        return orjson.dumps(cut).decode() if len(cut) <= _SKETCH_CHARS else f'"{cut}...'
    if isinstance(value, (list, dict)):
        if not value:
            return "[]" if isinstance(value, list) else "{}"
        if depth == 0:
            return "[...]" if isinstance(value, list) else "{...}"
        if isinstance(value, list):
            parts = [_sketch(v, depth - 1) for v in value[:_SKETCH_ITEMS]]
        else:
            parts = [
                f"{_sketch(k, 0)}: {_sketch(v, depth - 1)}"
                for k, v in itertools.islice(value.items(), _SKETCH_ITEMS)
            ]
        more = ", ..." if len(value) > _SKETCH_ITEMS else ""
        left, right = ("[", "]") if isinstance(value, list) else ("{", "}")
        return left + ", ".join(parts) + more + right
    if value is None or isinstance(value, (bool, int, float)):
        # JSON's scalars (orjson parses integers only within 64 bits, so these are short)
        return orjson.dumps(value).decode() if value == value else "NaN"
    return type(value).__name__


def _int64(flat: Sequence[int]) -> np.ndarray | None:
    """int64 array of Python ints (the caller checked their type); ``None`` on overflow."""
    if not flat:
        return np.zeros(0, dtype=np.int64)
    try:
        return np.array(flat, dtype=np.int64)
    except OverflowError:
        return None


def _weights_array(flat: list[Any]) -> np.ndarray | str:
    """float32 weights from a flat list of Python numbers, or a message saying what is wrong."""
    if not flat:
        return np.zeros(0, dtype=np.float32)
    kinds = set(map(type, flat))
    if not kinds <= {int, float}:
        bad = next(x for x in flat if type(x) not in (int, float))
        return f"weights must be numbers, got {json_type(bad)} ({_short(bad)})"
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        return "a weight does not fit in float32"
    big = np.abs(wide) > _FLOAT32_MAX
    if big.any():
        return f"weight {wide[np.flatnonzero(big)[0]]!r} does not fit in float32"
    return wide.astype(np.float32)


def _dump_array(a: np.ndarray, parts: list[bytes | memoryview]) -> None:
    """Append the pieces of ``orjson.dumps(a)`` (``a`` C-contiguous) to ``parts``, made in
    calls of at most about :data:`ENCODE_PIECE_FLOATS` floats each (slices along the first
    axis; a row larger than that is split in turn), so that no single call holds the GIL for
    long. Pieces are memoryviews of orjson's output without its brackets: the caller's one
    ``b"".join`` is the only copy (concatenating pieces as they came cost 70% more than one
    ``orjson.dumps`` of the whole answer, in copies and the page faults of fresh buffers)."""
    if a.ndim == 0 or a.size <= ENCODE_PIECE_FLOATS:
        parts.append(orjson.dumps(a, option=_DUMPS_OPTIONS))
        return
    parts.append(b"[")
    row = a.size // a.shape[0]
    if row > ENCODE_PIECE_FLOATS:
        for i in range(a.shape[0]):
            if i:
                parts.append(b",")
            _dump_array(a[i], parts)
    else:
        step = ENCODE_PIECE_FLOATS // row
        for i in range(0, a.shape[0], step):
            if i:
                parts.append(b",")
            parts.append(memoryview(orjson.dumps(a[i : i + step], option=_DUMPS_OPTIONS))[1:-1])
    parts.append(b"]")


class RestCodec:
    """Decodes predict bodies into lookup inputs and encodes the outputs, for one model.

    What each feature accepts and what its output holds is read from its
    :class:`~embserve.lookup.FeatureSpec`, the rules the lookup itself follows, made once here
    (not per request): single ids go to the lookup as dense ids when the feature accepts them
    and has no ``output_shape`` (dense ids ignore it, so such a feature gets bags of one);
    weights are refused up front for a feature that accepts none; output sizes are the spec's
    shapes.

    Args:
        features: the served feature name → ``FeatureConfig``.
        limits: the request limits.
    """

    def __init__(self, features: Mapping[str, es.FeatureConfig], limits: Limits) -> None:
        self.features = dict(features)
        self.limits = limits
        self.specs = {name: FeatureSpec.of(name, cfg) for name, cfg in self.features.items()}
        # Feature name → dim, for the features whose single ids are sent as dense ids.
        self._dense_dims = {
            name: spec.dim
            for name, spec in self.specs.items()
            if spec.accepts_dense and spec.output_shape is None
        }

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, body: bytes) -> DecodedRequest:
        """Parse and convert a predict body.

        Raises:
            RequestError: 400 for malformed JSON, an unknown feature, a value of the wrong
                type or shape, or a request beyond the limits.
        """
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, f"JSON Parse error: {exc}") from None
        if not isinstance(payload, dict):
            raise RequestError(
                400,
                "the request body must be a JSON object with an 'instances' or 'inputs' key, "
                f"got {json_type(payload)}",
            )
        for key in payload:
            if key not in ("instances", "inputs", "signature_name"):
                raise RequestError(
                    400,
                    f"unknown key {_quote(key)} in the request; expected 'instances' or 'inputs' "
                    "(and optionally 'signature_name')",
                )
        signature = payload.get("signature_name", "")
        if signature not in _SIGNATURES:
            shown = _quote(signature) if isinstance(signature, str) else _short(signature)
            raise RequestError(
                400, f"unknown signature_name {shown}; this model serves only 'serving_default'"
            )
        if "instances" in payload and "inputs" in payload:
            raise RequestError(400, "Only one of 'instances' or 'inputs' can be specified")
        if "instances" in payload:
            return self._decode_instances(payload["instances"])
        if "inputs" in payload:
            return self._decode_inputs(payload["inputs"])
        raise RequestError(400, "Missing 'inputs' or 'instances' key")

    def _check_feature(self, name: str) -> FeatureSpec:
        spec = self.specs.get(name)
        if spec is None:
            # difflib is quadratic-ish in the name's length: only names a person could mistype
            close = (
                difflib.get_close_matches(name, list(self.features), n=1)
                if len(name) <= _NAME_MAX_HINT
                else []
            )
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RequestError(
                400,
                f"unknown feature {_quote(name)}{hint} (the model's features: "
                f"{list(self.features)})",
            )
        return spec

    def _check_batch(self, batch: int, what: str) -> None:
        if batch > self.limits.max_batch:
            raise RequestError(
                400,
                f"{what} holds {batch} examples, more than the limit of "
                f"{self.limits.max_batch} per request (limits.max_batch)",
            )

    def _decode_instances(self, instances: Any) -> DecodedRequest:
        if not isinstance(instances, list):
            raise RequestError(400, f"'instances' must be a list, got {json_type(instances)}")
        batch = len(instances)
        self._check_batch(batch, "'instances'")
        if batch == 0:
            return DecodedRequest(False, 0, {})
        first = instances[0]
        if not isinstance(first, dict):
            raise RequestError(
                400,
                "instance 0 must be an object mapping feature names to values, got "
                f"{json_type(first)}",
            )
        names = list(first)
        if not names:
            raise RequestError(400, "instance 0 names no feature")
        for name in names:
            self._check_feature(name)
        # Columns are cut out with C loops (itemgetter, zip); the slow scans only word errors.
        if set(map(type, instances)) != {dict}:
            i, inst = next((i, x) for i, x in enumerate(instances) if type(x) is not dict)
            raise RequestError(
                400,
                f"instance {i} must be an object mapping feature names to values, got "
                f"{json_type(inst)}",
            )
        picked: list[Any] | None = None
        if set(map(len, instances)) == {len(names)}:
            try:
                picked = list(map(operator.itemgetter(*names), instances))
            except KeyError:
                picked = None
        if picked is None:
            for i, inst in enumerate(instances):
                if len(inst) != len(names) or any(name not in inst for name in names):
                    self._mismatched_instance(i, inst, names)
            raise AssertionError("unreachable: some instance differs")  # pragma: no cover
        columns: dict[str, Sequence[Any]] = (
            {names[0]: picked}
            if len(names) == 1
            else dict(zip(names, zip(*picked, strict=True), strict=True))
        )
        return self._convert(columns, batch, columnar=False)

    def _mismatched_instance(
        self, i: int, inst: dict[str, Any], columns: Sequence[str]
    ) -> NoReturn:
        """Raise the 400 for an instance whose features differ from instance 0's."""
        extra = [k for k in inst if k not in columns]
        if extra:
            self._check_feature(extra[0])
            raise RequestError(
                400,
                f"instance {i} has feature {extra[0]!r}, which instance 0 lacks; every instance "
                "must name the same features",
            )
        missing = next(k for k in columns if k not in inst)
        raise RequestError(
            400,
            f"instance {i} lacks feature {missing!r}, which instance 0 has; every instance "
            "must name the same features",
        )

    def _decode_inputs(self, inputs: Any) -> DecodedRequest:
        if not isinstance(inputs, dict):
            raise RequestError(
                400,
                "'inputs' must be an object mapping feature names to lists of values (one per "
                f"example), got {json_type(inputs)}",
            )
        if not inputs:
            raise RequestError(400, "'inputs' names no feature")
        batch = -1
        for name, column in inputs.items():
            self._check_feature(name)
            if not isinstance(column, list):
                raise RequestError(
                    400,
                    f"feature {name!r}: 'inputs' values must be lists with one value per "
                    f"example, got {json_type(column)}",
                )
            self._check_batch(len(column), f"feature {name!r}")
            if batch < 0:
                batch = len(column)
        return self._convert(inputs, batch, columnar=True)

    def _convert(
        self, columns: Mapping[str, Sequence[Any]], batch: int, *, columnar: bool
    ) -> DecodedRequest:
        out: dict[str, FeatureInput] = {}
        total = 0
        floats_left = self.limits.max_output_floats
        for name, values in columns.items():
            feature = self._column(name, values, columnar, floats_left)
            floats_left -= feature.output_floats
            total += feature.num_ids
            if total > self.limits.max_ids_per_request:
                raise RequestError(
                    400,
                    f"the request holds more than {self.limits.max_ids_per_request} ids (the "
                    f"limit per request, limits.max_ids_per_request; reached at feature "
                    f"{name!r})",
                )
            out[name] = feature
        return DecodedRequest(
            columnar, batch, out, total, self.limits.max_output_floats - floats_left
        )

    def _check_output(self, name: str, dims: Sequence[int], floats_left: int) -> int:
        """The floats of an output of shape ``dims``; 400 when they exceed what the request
        may still ask for (``floats_left`` of ``limits.max_output_floats``)."""
        floats = math.prod(dims)
        if floats > floats_left:
            limit = self.limits.max_output_floats
            shape = " × ".join(f"{d:,}" for d in dims)
            rest = "" if floats_left == limit else ", with the features before it"
            raise RequestError(
                400,
                f"feature {name!r}: its output would hold {shape} = {floats:,} floats, which "
                f"takes the request{rest} past the limit of {limit:,} output floats per "
                "request (limits.max_output_floats)",
            )
        return floats

    def _bag_output(self, name: str, batch: int, floats_left: int) -> int:
        """Output floats of one combined bag (or one sequence) per example: the spec's shape
        for ``batch`` ragged rows (an ``output_shape`` that cannot apply to the batch is the
        lookup's 400, given before anything is built)."""
        try:
            shape = self.specs[name].ragged_output_shape(batch)
        except es.InputError as exc:
            raise RequestError(400, str(exc)) from None
        return self._check_output(name, shape, floats_left)

    def _column(
        self, name: str, values: Sequence[Any], columnar: bool, floats_left: int
    ) -> FeatureInput:
        """One feature's values (one per example) → lookup input."""
        kinds = set(map(type, values))
        if kinds <= {int}:
            dim = self._dense_dims.get(name)
            if dim is not None:
                # The spec's dense_output_shape((n,)) is (n, dim), counted inline: the hot
                # path, 26 times per request.
                floats = len(values) * dim
                if floats > floats_left:
                    self._check_output(name, [len(values), dim], floats_left)
                ids = _int64(values)
                if ids is None:
                    i, bad = next(
                        (i, x) for i, x in enumerate(values) if not _INT64_MIN <= x <= _INT64_MAX
                    )
                    raise RequestError(400, f"{_where(name, columnar, i)}: {_describe_bad_id(bad)}")
                return FeatureInput(ids, None, ids.shape[0], floats)
            return self._bags(name, [[v] for v in values], None, columnar, floats_left)
        if kinds <= {int, list}:
            rows = values if int not in kinds else [[v] if type(v) is int else v for v in values]
            return self._bags(name, rows, None, columnar, floats_left)
        # Weighted values (or values of the wrong type): one look at each example.
        rows = []
        weight_parts: list[Any] = []
        for i, v in enumerate(values):
            t = type(v)
            if t is list:
                rows.append(v)
                weight_parts.append(None)
            elif t is int:
                rows.append([v])
                weight_parts.append(None)
            elif t is dict:
                ids, weights = self._weighted(name, v, columnar, i)
                rows.append([ids] if type(ids) is int else ids)
                weight_parts.append(weights)
            else:
                raise RequestError(
                    400,
                    f"{_where(name, columnar, i)}: expected {_EXPECTED}, got {json_type(v)} "
                    f"({_short(v)})",
                )
        # Only weights the client sent reach the lookup: {"ids": ...} alone is a plain bag (a
        # sequence feature refuses weights, even all-1.0 ones).
        if all(w is None for w in weight_parts):
            return self._bags(name, rows, None, columnar, floats_left)
        try:
            self.specs[name].check_weights()  # the lookup's refusal, before arrays are built
        except es.InputError as exc:
            raise RequestError(400, str(exc)) from None
        return self._bags(name, rows, weight_parts, columnar, floats_left)

    def _weighted(
        self, name: str, value: dict[str, Any], columnar: bool, i: int
    ) -> tuple[Any, Any]:
        where = _where(name, columnar, i)
        for key in value:
            if key not in ("ids", "weights"):
                raise RequestError(
                    400,
                    f'{where}: unknown key {_quote(key)}; a weighted value is {{"ids": ..., '
                    '"weights": ...}',
                )
        if "ids" not in value:
            raise RequestError(400, f'{where}: a weighted value needs "ids"')
        ids = value["ids"]
        weights = value.get("weights")
        if type(ids) not in (int, list):
            raise RequestError(
                400, f'{where}: "ids" must be an id or a list of ids, got {json_type(ids)}'
            )
        if weights is None:
            return ids, None
        if type(ids) is int:
            if type(weights) not in (int, float):
                raise RequestError(
                    400,
                    f'{where}: "weights" must be one number for one id, got {json_type(weights)}',
                )
            return [ids], [weights]
        if type(weights) is not list:
            raise RequestError(
                400,
                f'{where}: "weights" must be a list like "ids", got {json_type(weights)}',
            )
        if len(weights) != len(ids):
            raise RequestError(
                400,
                f'{where}: "weights" has {len(weights)} entries but "ids" has {len(ids)}; they '
                "pair by position",
            )
        return ids, weights

    def _bags(
        self,
        name: str,
        rows: Sequence[Any],
        weight_parts: list[Any] | None,
        columnar: bool,
        floats_left: int,
    ) -> FeatureInput:
        """One bag (a list) per example → ``es.RaggedTensor`` ids (and weights)."""
        flat = list(itertools.chain.from_iterable(rows))
        kinds = set(map(type, flat))
        if list in kinds:
            return self._multi_bags(name, rows, weight_parts, columnar, floats_left)
        floats = self._bag_output(name, len(rows), floats_left)
        self._check_ids_limit(name, len(flat))
        ids = _int64(flat) if kinds <= {int} else None
        if ids is None:
            found = _first_bad_id(rows, 1)
            assert found is not None
            raise RequestError(
                400, f"{_where(name, columnar, found[0])}: {_describe_bad_id(found[1])}"
            )
        splits = np.fromiter(
            itertools.accumulate(map(len, rows), initial=0), dtype=np.int64, count=len(rows) + 1
        )
        ragged_ids = es.RaggedTensor.from_row_splits(ids, splits, validate=False)
        if weight_parts is None:
            return FeatureInput(ragged_ids, None, len(flat), floats)
        wrows: list[Any] = []
        for i, (row, w) in enumerate(zip(rows, weight_parts, strict=True)):
            if w is None:
                wrows.append(itertools.repeat(1.0, len(row)))
            elif w and type(w[0]) is list:
                raise RequestError(
                    400,
                    f'{_where(name, columnar, i)}: "weights" is a list of lists but "ids" is '
                    "one bag",
                )
            else:
                wrows.append(w)
        weights = _weights_array(list(itertools.chain.from_iterable(wrows)))
        if isinstance(weights, str):
            raise RequestError(400, f"feature {name!r}: {weights}")
        ragged_weights = es.RaggedTensor.from_row_splits(weights, splits, validate=False)
        return FeatureInput(ragged_ids, ragged_weights, len(flat), floats)

    def _multi_bags(
        self,
        name: str,
        parts: Sequence[Any],
        weight_parts: list[Any] | None,
        columnar: bool,
        floats_left: int,
    ) -> FeatureInput:
        """Several bags per example → rank-3 ``es.SparseTensor`` ``[batch, bags, ids]``.

        The output is ``[batch, most bags in an example, dim]`` (the sparse path ignores
        ``max_sequence_length`` and ``output_shape`` at rank 3): it is counted from the bag
        counts alone, before the bags are flattened, because empty bags cost no ids.
        """
        for i, p in enumerate(parts):
            if any(type(bag) is not list for bag in p):
                raise RequestError(
                    400,
                    f"{_where(name, columnar, i)}: expected a list of lists of ids, got "
                    f"{_short(p)}; once one example of a feature gives several bags (lists), "
                    "every example must give its bags as lists",
                )
        batch = len(parts)
        bags_per_example = np.fromiter(map(len, parts), dtype=np.int64, count=batch)
        most_bags = int(bags_per_example.max()) if batch else 0
        # A rank-3 output's shape does not depend on the ids per bag (the last dimension).
        out_shape = self.specs[name].sparse_output_shape((batch, most_bags, 0))
        floats = self._check_output(name, out_shape, floats_left)
        all_bags = list(itertools.chain.from_iterable(parts))
        bag_lengths = np.fromiter(map(len, all_bags), dtype=np.int64, count=len(all_bags))
        flat = list(itertools.chain.from_iterable(all_bags))
        self._check_ids_limit(name, len(flat))
        values = _int64(flat) if set(map(type, flat)) <= {int} else None
        if values is None:
            found = _first_bad_id(parts, 2)
            assert found is not None
            raise RequestError(
                400, f"{_where(name, columnar, found[0])}: {_describe_bad_id(found[1])}"
            )
        n = values.shape[0]
        nbags = len(all_bags)
        bag_starts = np.zeros(batch, dtype=np.int64)
        np.cumsum(bags_per_example[:-1], out=bag_starts[1:])
        id_starts = np.zeros(nbags, dtype=np.int64)
        np.cumsum(bag_lengths[:-1], out=id_starts[1:])
        example_of_bag = np.repeat(np.arange(batch, dtype=np.int64), bags_per_example)
        bag_in_example = np.arange(nbags, dtype=np.int64) - np.repeat(bag_starts, bags_per_example)
        indices = np.empty((n, 3), dtype=np.int64)
        indices[:, 0] = np.repeat(example_of_bag, bag_lengths)
        indices[:, 1] = np.repeat(bag_in_example, bag_lengths)
        indices[:, 2] = np.arange(n, dtype=np.int64) - np.repeat(id_starts, bag_lengths)
        shape = [batch, most_bags, int(bag_lengths.max()) if nbags else 0]
        sparse_ids = es.SparseTensor(indices, values, shape)
        if weight_parts is None:
            return FeatureInput(sparse_ids, None, n, floats)
        wbags: list[Any] = []
        for i, (p, w) in enumerate(zip(parts, weight_parts, strict=True)):
            if w is None:
                wbags.extend(itertools.repeat(1.0, len(bag)) for bag in p)
                continue
            if any(type(wb) is not list or len(wb) != len(b) for wb, b in zip(w, p, strict=True)):
                raise RequestError(
                    400,
                    f'{_where(name, columnar, i)}: "weights" must be lists of the same lengths '
                    'as the bags of "ids"',
                )
            wbags.extend(w)
        weights = _weights_array(list(itertools.chain.from_iterable(wbags)))
        if isinstance(weights, str):
            raise RequestError(400, f"feature {name!r}: {weights}")
        return FeatureInput(sparse_ids, es.SparseTensor(indices, weights, shape), n, floats)

    def _check_ids_limit(self, name: str, n: int) -> None:
        if n > self.limits.max_ids_per_request:
            raise RequestError(
                400,
                f"feature {name!r} holds {n} ids, more than the limit of "
                f"{self.limits.max_ids_per_request} per request (limits.max_ids_per_request)",
            )

    # -- encoding -------------------------------------------------------------------------------

    def encode(self, request: DecodedRequest, outputs: Mapping[str, np.ndarray]) -> bytes:
        """The response body for ``outputs`` (feature name → activations).

        Raises:
            RequestError: 400 when an ``"instances"`` request meets a feature whose output has
                no batch dimension of the request's size (an ``output_shape`` reshaping it).
        """
        pieces = request.output_floats > ENCODE_PIECE_FLOATS
        if request.columnar:
            if pieces:
                parts: list[bytes | memoryview] = [b'{"outputs":{']
                for n, (k, v) in enumerate(outputs.items()):
                    parts.append(b"," + orjson.dumps(k) + b":" if n else orjson.dumps(k) + b":")
                    _dump_array(np.ascontiguousarray(v), parts)
                parts.append(b"}}")
                return b"".join(parts)
            return orjson.dumps(
                {"outputs": {k: np.ascontiguousarray(v) for k, v in outputs.items()}},
                option=_DUMPS_OPTIONS,
            )
        names = list(outputs)
        arrays = []
        for name in names:
            array = np.ascontiguousarray(outputs[name])
            if array.ndim == 0 or array.shape[0] != request.batch:
                raise RequestError(
                    400,
                    f"feature {name!r}: its output has shape {list(array.shape)}, whose first "
                    f"dimension is not the {request.batch} instances (the feature's "
                    "output_shape reshapes it); send this request in the columnar 'inputs' "
                    "form",
                )
            arrays.append(array)
        # One numpy view per example and feature, serialized by orjson in C: as fast as
        # cutting one serialized array into rows (measured: 6.1 ms either way for 256
        # instances x 26 features x 16 floats, of which 3.4 ms is formatting the floats).
        predictions = [dict(zip(names, row, strict=True)) for row in zip(*arrays, strict=True)]
        if pieces and predictions:
            per_example = request.output_floats // len(predictions)
            parts = [b'{"predictions":[']
            if per_example > ENCODE_PIECE_FLOATS:  # each example in pieces of its own
                keys = [orjson.dumps(name) + b":" for name in names]
                for i in range(len(predictions)):
                    parts.append(b",{" if i else b"{")
                    for n, (key, a) in enumerate(zip(keys, arrays, strict=True)):
                        parts.append(b"," + key if n else key)
                        _dump_array(a[i], parts)
                    parts.append(b"}")
            else:
                step = ENCODE_PIECE_FLOATS // max(1, per_example)
                for i in range(0, len(predictions), step):
                    if i:
                        parts.append(b",")
                    piece = orjson.dumps(predictions[i : i + step], option=_DUMPS_OPTIONS)
                    parts.append(memoryview(piece)[1:-1])
            parts.append(b"]}")
            return b"".join(parts)
        return orjson.dumps({"predictions": predictions}, option=_DUMPS_OPTIONS)

    def out_of_range_counts(self, request: DecodedRequest) -> dict[str, int]:
        """Feature name → how many of its ids lie outside its table (for metrics, after a
        lookup refused the request; negative sparse ids are dropped by the lookup, not
        refused, so they are not counted)."""
        counts: dict[str, int] = {}
        for name, feature in request.features.items():
            rows = self.features[name].table.vocabulary_size
            ids = feature.ids
            if isinstance(ids, np.ndarray):
                counts[name] = int(np.count_nonzero((ids < 0) | (ids >= rows)))
            elif isinstance(ids, es.RaggedTensor):
                v = ids.values
                counts[name] = int(np.count_nonzero((v < 0) | (v >= rows)))
            else:
                counts[name] = int(np.count_nonzero(np.asarray(ids.values) >= rows))
        return counts
