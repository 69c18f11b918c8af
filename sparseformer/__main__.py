"""`python -m sparseformer` runs the CLI (same as the `sparseformer` console script)."""

from .cli import main

if __name__ == "__main__":
    main()
