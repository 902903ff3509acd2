"""`python -m producer ...` is the `panel` command, for machines where scripts are not on PATH."""

import sys

from producer.cli import main

sys.exit(main())
