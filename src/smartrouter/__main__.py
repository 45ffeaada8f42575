import sys

from smartrouter.cli import main

sys.exit(main())
