"""`python -m loraops_trainer`: the program a LoraTraining Job runs."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
