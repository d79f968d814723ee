"""Entry point for running from a checkout: ``python cli.py train --method patchbag``."""
from greedy.cli import main

if __name__ == "__main__":
    main()
