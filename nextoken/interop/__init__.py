"""Hugging Face interop: export a run as a `transformers` model directory, import one as a run, and read
`datasets` as a corpus source. Built on run.py, checkpoint/ and the public API, never on the loop.

    adapters.py    which transformers architecture computes the same function as a ModelConfig, and the
                   weights' names and layouts both ways (torchtitan's state_dict_adapter.py)
    hf_export.py   RUN -> a directory AutoModelForCausalLM / AutoTokenizer load (`nextoken export`)
    hf_import.py   a transformers directory -> a run with a step-0 checkpoint (`nextoken import`, `--init-from`)
    datasets_source.py   a `datasets` dataset as documents for `nextoken prepare`

`transformers` and `datasets` are the optional extra `nextoken[hf]`; `require` names it when missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nextoken.errors import NextokenError


class InteropError(NextokenError):
    """A model, directory or option that has no exact counterpart on the other side."""


def require(module: str, what: str) -> ModuleType:
    """`module` imported, or an InteropError that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InteropError(f"{what} needs {module}: pip install 'nextoken[hf]'") from None
