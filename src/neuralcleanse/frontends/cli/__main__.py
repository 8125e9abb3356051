"""``python -m neuralcleanse.frontends.cli``: the same as the ``neuralcleanse`` command."""

from neuralcleanse.frontends.cli import main

main()
