"""The rows a Ray job gives back: one per input file (per voice with several voices), their columns.

Below every other module of the runner: the stages fill these rows, the driver checks them
(:mod:`._rows`) and writes them to the manifest, locally or on object storage (:mod:`._storage`).
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["REPEAT_NOTE", "ROW_SCHEMA", "STAGES", "VOICE_ROW_SCHEMA"]

#: In the ``warnings`` of a ``skipped`` row that repeats an earlier row of the job (the same path
#: and output): that row converts the file and has its outcome; this one says nothing of it.
REPEAT_NOTE = "a repeat of an earlier row of this job"

#: Stage timings reported per file, as ``<stage>_s`` columns (seconds).
STAGES = ("decode", "f0", "features", "index", "synth", "post", "write")

#: One row per input file.
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("output_path", pa.string()),
        ("status", pa.string()),  # ok | skipped | error
        ("error", pa.string()),
        ("seconds", pa.float64()),  # processing time of this file, all stages
        ("audio_seconds", pa.float64()),  # duration of the input
        ("node", pa.string()),  # Ray node id of the worker that finished the row
        ("host", pa.string()),
        ("warnings", pa.string()),  # input warnings, one per line
        *[(f"{s}_s", pa.float64()) for s in STAGES],
    ]
)
#: One row per (input, voice) in a job with several voices: :data:`ROW_SCHEMA` and the voice's
#: name after ``path``. A one-model job's rows have no ``voice`` column (they stay as they were).
VOICE_ROW_SCHEMA = pa.schema([ROW_SCHEMA.field(0), ("voice", pa.string()), *list(ROW_SCHEMA)[1:]])
