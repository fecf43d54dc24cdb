"""`python -m fasterdata …` is the `fasterdata` command."""

import sys

from .cli import main

sys.exit(main())
