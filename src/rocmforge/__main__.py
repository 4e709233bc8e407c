"""`python -m rocmforge` is the `rocmforge` command."""

from __future__ import annotations

import sys

from rocmforge.cli.main import main

sys.exit(main())
