"""Errors that a user can act on. The CLI prints their message without a traceback."""

__all__ = ["ConfigError", "DatasetError", "ImageError", "UserError", "WeightsError"]


class UserError(Exception):
    """Bad input or a missing resource; the message names the file or setting and the problem."""


class ConfigError(UserError, ValueError):
    """A configuration value or file that cannot be used."""


class DatasetError(UserError, ValueError):
    """The dataset or split cannot be used as a whole (no classes, an empty class, ...)."""


class WeightsError(UserError, RuntimeError):
    """Backbone weights could not be had; the message says what to do instead."""


class ImageError(UserError, ValueError):
    """A file that cannot be used as an image; `reason` says why in a few words."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
