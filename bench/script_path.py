"""Imported first by every bench script run as a file (`python bench/queue.py`).

Python then puts bench/ first on sys.path, where bench/queue.py would shadow the standard
library's queue module (psycopg and concurrent.futures import it). This puts the repository root
there instead, which also makes `bench.common` importable (`worker`, with `worker.devstack`, comes
from the editable install).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
