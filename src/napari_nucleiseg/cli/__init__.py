"""The ``nucleiseg`` command line."""
