"""python -m avcache.sample: the same as avcache-sample."""

import sys

from avcache.sample.cli import main

sys.exit(main())
