"""Op kinds and dtypes of a layer description, without importing torch.

The same values as :data:`hwloop.workload.OP_KINDS` / :data:`hwloop.workload.DTYPES`
(``tests/test_predict_plain.py`` checks they agree); predictor loading and prediction from plain
layer descriptions import these, so they need neither torch nor :mod:`hwloop.workload`.

Example:
    >>> from hwloop.opkinds import OP_KINDS, DTYPES
    >>> OP_KINDS[0], DTYPES["float16"]
    ('conv2d', 2)
"""

from __future__ import annotations

__all__ = ["DTYPES", "OP_KINDS"]

OP_KINDS = ("conv2d", "linear", "matmul", "batchnorm", "activation", "pooling", "add", "other")
DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}
