"""The CPU fast paths: start-up cost of loading, the fused decoder, its buffer reuse, bfloat16 quality.

Every fast path is checked against an independent computation of the same function (the
plain decoder, float32), never against timings.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401


def test_loading_a_voice_model_does_not_import_dynamo(tiny_models) -> None:
    """Building the model on the meta device must not go through torch's Python reference ops,
    which import torch._dynamo (about 1.3 s of start-up per process)."""
    code = textwrap.dedent(
        f"""
        import sys
        from rvcfast.models.synthesizer import load_vocoder
        load_vocoder({str(tiny_models.voice)!r})
        load_vocoder({str(tiny_models.voice_nof0)!r})
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"
