"""Feature retrieval indexes: read and write faiss ``IVF*,Flat`` files without faiss.

RVC blends the content features of every 20 ms frame with their nearest
neighbours among the training features (``index_rate``). The neighbours come
from a faiss ``IndexIVFFlat`` stored in an ``.index`` file. This package:

* parses that binary format directly with numpy (:func:`load_index`, :mod:`.format`);
  nothing is unpickled and faiss is never imported;
* searches it in torch (:meth:`RetrievalIndex.search`, :mod:`.search`) with faiss's
  semantics: the ``nprobe`` nearest coarse centroids (``nprobe`` is stored in the file
  and is 1 for every RVC index), only those inverted lists, the ``k`` nearest vectors
  by squared L2 in ascending order, padded with id ``-1`` and distance ``FLT_MAX``
  when the probed lists hold fewer than ``k`` vectors;
* applies RVC's retrieval blend (:meth:`RetrievalIndex.blend`, :mod:`.retrieval`);
* builds indexes from vectors (k-means, :mod:`.build`) and writes valid faiss files
  (:func:`save_index`), for tests and benchmarks.

Supported files: ``IndexIVFFlat`` (fourcc ``IwFl``) with an L2 flat coarse
quantizer and array inverted lists (``full`` or ``sprs`` layout), and a bare
``IndexFlatL2`` (``IxF2``; searched exactly, as one list).
"""

from __future__ import annotations

from .build import default_nlist
from .retrieval import RetrievalIndex, load_index, neighbour_weights, save_index
from .search import FLT_MAX

__all__ = [
    "FLT_MAX",
    "RetrievalIndex",
    "load_index",
    "save_index",
    "default_nlist",
    "neighbour_weights",
]
