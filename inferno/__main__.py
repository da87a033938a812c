"""``python -m inferno``."""

from inferno.cli import main

# Guarded: a spawned worker process (the proxy's body parser) imports this module too.
if __name__ == "__main__":
    main()
