"""``python -m fademem.cli``: the ``fademem`` command."""

from fademem.cli import main

if __name__ == "__main__":
    main()
