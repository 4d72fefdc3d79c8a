"""A fresh virtual environment without facetrec, for tests that must not import the checkout.

Its third-party libraries (PyTorch, Spark, ...) come from the suite's own environment through a
``.pth`` path line rather than a second download; a path line does not run that environment's own
``.pth`` files, so the suite's editable install of facetrec is not visible in it.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def bare_venv(root: Path) -> Path:
    """Create ``root`` as a venv whose Python sees the suite's libraries but not facetrec; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "facetrec-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([str(python), "-c", "import facetrec"], capture_output=True, text=True, cwd=root)
    assert probe.returncode != 0, "the fresh venv can import facetrec: it would not test what it should"
    return python
