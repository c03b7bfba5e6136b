import sys

from tinyfast.cli import main

sys.exit(main())
