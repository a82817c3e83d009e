"""`python -m screener.cli`: the same as the `screener` command."""

import sys

from screener.cli import main

sys.exit(main())
