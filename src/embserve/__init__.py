"""embserve: TensorFlow's TPUEmbedding serving API on the CPU, without TensorFlow.

``import embserve as es`` mirrors ``tf.tpu.experimental.embedding`` for serving: the same names,
arguments, defaults, results (to float tolerance) and errors. The first block below reads like
TensorFlow's index page; the second holds what embserve adds.
"""

from embserve import train  # es.train mirrors tf.train
from embserve.config import FeatureConfig, QuantizationConfig, RowIdInitializer, TableConfig
from embserve.embedding import TPUEmbeddingForServing
from embserve.errors import (
    CheckpointBusyError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigError,
    CorruptCheckpointError,
    EmbserveError,
    FeatureConfigTypeError,
    IdOutOfRangeError,
    InputError,
    QuantizationError,
)
from embserve.inputs import RaggedTensor, SparseTensor
from embserve.lookup import serving_embedding_lookup
from embserve.optimizers import FTRL, SGD, Adagrad, AdagradMomentum, Adam
from embserve.storage import QuantizedTable

__version__ = "0.1.0"

__all__ = [
    # tf.tpu.experimental.embedding (the serving half)
    "FTRL",
    "SGD",
    "Adagrad",
    "AdagradMomentum",
    "Adam",
    "FeatureConfig",
    "QuantizationConfig",
    "RowIdInitializer",
    "TPUEmbeddingForServing",
    "TableConfig",
    "serving_embedding_lookup",
    # tf.train's checkpoint calls, as the module es.train
    "train",
    # embserve's own: input containers and errors
    "CheckpointBusyError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigError",
    "CorruptCheckpointError",
    "EmbserveError",
    "FeatureConfigTypeError",
    "IdOutOfRangeError",
    "InputError",
    "QuantizationError",
    "QuantizedTable",
    "RaggedTensor",
    "SparseTensor",
]
