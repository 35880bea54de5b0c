"""The one exception root: every error this package raises derives from it, so each face catches one type."""

from __future__ import annotations


class VllmPaddleOcrError(Exception):
    """Root of every vllm-paddle-ocr error; its message is the line a user reads, saying what to do."""

    exit_code = 1  # what the command line exits with when this error ends a command


class PluginError(VllmPaddleOcrError):
    """A plugin is missing, or answered nothing for a question it must answer."""


class IncompatibleEngine(VllmPaddleOcrError):
    """The installed engine cannot serve the model; the message names the version needed."""


class ServeRequestError(VllmPaddleOcrError):
    """The serve request cannot be read: a flag is missing its value or has one it cannot take."""

    exit_code = 2  # a usage error, as argparse exits
