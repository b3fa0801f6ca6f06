"""`python -m qwen_deploy` runs the command-line interface."""

from qwen_deploy.cli import run

run()
