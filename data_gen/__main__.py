"""`python -m data_gen <pipeline> ...`: see data_gen/cli.py and data_gen/README.md."""
import sys

from data_gen.cli import main

if __name__ == "__main__":
  sys.exit(main())
