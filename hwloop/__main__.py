import sys

from hwloop.cli import main

sys.exit(main())
