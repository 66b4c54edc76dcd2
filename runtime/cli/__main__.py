"""``python -m runtime.cli``: the same as the ``stint`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
