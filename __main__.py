"""`python -m tokenjoule`: the same command as the `tokenjoule` script."""

import sys

from tokenjoule.cli import main

sys.exit(main())
