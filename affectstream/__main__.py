import sys

from affectstream.cli import main

sys.exit(main())
