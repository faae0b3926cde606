"""`make bench`: every benchmark of the project, one after the other."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["seal_open.py", "keystore_lookup.py", "gateway.py", "memory.py", "signing.py"]

status = 0
for name in BENCHES:
    print(f"== {name}", flush=True)
    status |= subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]]).returncode
sys.exit(status)
