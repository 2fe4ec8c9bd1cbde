"""``python -m ditkit.cli COMMAND ...`` (e.g. under ``torchrun``): the ``ditkit`` command."""
from . import main

main()
