"""nixlayer: turn a Nix closure into a layered, reproducible container image.

The data flows one way, one module per stage:
closure file → ``readers`` → ``Closure`` → ``graph`` → ``strategies`` → ``Plan``
→ ``tarwriter`` (one tar per layer) → ``docker_archive`` (the image) → bytes.
"""

__version__ = "0.1.0"
