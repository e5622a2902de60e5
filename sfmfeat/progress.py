"""Progress bars that follow sfmfeat's log level.

``tqdm`` here is a drop-in for ``tqdm.tqdm``: a bar is shown only while the ``sfmfeat``
logger shows INFO messages, so ``-q`` (warnings and errors only) silences the bars too.
An explicit ``disable=`` wins.
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm as _tqdm


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    if "disable" not in kwargs:
        kwargs["disable"] = not logging.getLogger("sfmfeat").isEnabledFor(logging.INFO)
    return _tqdm(*args, **kwargs)
