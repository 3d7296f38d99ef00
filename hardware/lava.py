"""The only module that imports Lava (lava-nc 0.10.0), with its Python 3.11 shim.

lava-nc 0.10.0 declares Python <3.11. On 3.11 one import fails: in
``lava.magma.compiler.var_model`` the dataclasses ``CoreEncoder``, ``ChipEncoder`` and
``AxonEncoder`` use ``ByteEncoder()`` instances as field defaults, and 3.11 rejects a default
whose class is unhashable (``ValueError: mutable default ... ByteEncoder``). ``import_lava``
applies a shim before the first import: while ``var_model`` is imported, ``dataclasses.dataclass``
is wrapped so that the class ``ByteEncoder`` of that module alone gets ``unsafe_hash=True`` (it
stays mutable, exactly as on 3.10). Nothing on disk changes; Lava's forked workers inherit the
patched module.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys

from spikeprop import SpikepropError

VAR_MODEL = "lava.magma.compiler.var_model"


def _apply_py311_shim() -> None:
    if sys.version_info < (3, 11) or VAR_MODEL in sys.modules:
        return
    original = dataclasses.dataclass

    def patched(cls=None, /, **kwargs):
        def wrap(c):
            if c.__name__ == "ByteEncoder" and c.__module__ == VAR_MODEL:
                kwargs.setdefault("unsafe_hash", True)
            return original(c, **kwargs)

        return wrap if cls is None else wrap(cls)

    dataclasses.dataclass = patched
    try:
        sys.modules.pop(VAR_MODEL, None)  # a failed earlier attempt may have left a half module
        module = importlib.import_module(VAR_MODEL)
    finally:
        dataclasses.dataclass = original
    module.dataclass = original


def import_lava():
    """Import Lava (with the 3.11 shim) and return the ``lava`` package.

    Raises SpikepropError with the install command when lava-nc is missing.
    """
    try:
        importlib.import_module("lava")
    except ImportError:
        raise SpikepropError("Lava is not installed: run scripts/install.sh (it installs lava-nc 0.10.0)") from None
    _apply_py311_shim()
    import lava.magma.core.run_configs  # noqa: F401  (fails here if the shim did not work)

    return sys.modules["lava"]
