"""The command line: the parser and every command handler."""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
