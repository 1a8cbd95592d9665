"""``python -m distlb.cli``: the ``distlb`` command."""

import sys

from distlb.cli import main

sys.exit(main())
