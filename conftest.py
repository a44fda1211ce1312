"""Repository-wide test settings: tests never download.

``CRYSTAL_OFFLINE=1`` for the whole session (subprocesses inherit it): a test that needs a
weights file it does not provide fails with the offline message instead of reaching the
authors' servers. Tests of the download path unset it and use a local server or ``file://``.

``CRYSTAL_CACHE`` points at a fresh temporary folder: tests never read or write the user's
cache (downloaded weights, memory-model calibrations).
"""

from __future__ import annotations

import os
import tempfile

os.environ["CRYSTAL_OFFLINE"] = "1"
os.environ["CRYSTAL_CACHE"] = tempfile.mkdtemp(prefix="crystal-test-cache-")
