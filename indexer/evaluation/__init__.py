"""``vidseek eval``: text-video retrieval metrics per encoder configuration (see :mod:`.harness`)."""
