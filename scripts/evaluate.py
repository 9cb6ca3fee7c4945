#!/usr/bin/env python3
"""The evaluation script: exactly ``ticketclf evaluate`` (see ``ticketclf evaluate --help``).

Usage:
    python scripts/evaluate.py BUNDLE --data TEST_FILE --output REPORT_DIR [options]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works from a checkout without installing

from classifier.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
