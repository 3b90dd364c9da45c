import sys

from batchpipe.cli import main

sys.exit(main())
