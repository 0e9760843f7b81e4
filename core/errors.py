"""Errors a user can act on.

Each carries a one-line message that names the problem and, where there is one, the fix. The
command line prints ``error: <message>`` and exits non-zero without a traceback; the pages show the
message with ``st.error``. Anything that is not an :class:`InspectError` is a bug and keeps its
traceback.
"""


class InspectError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DatasetError(InspectError):
    """The dataset root or its MVTec AD layout is wrong."""


class ConfigError(InspectError, ValueError):
    """A model setting is out of range (image size, model size, steps, layers...).

    Also a :class:`ValueError`, so code that validates settings generically keeps working.
    """


class ImageError(InspectError):
    """A file is not a readable image (not an image, truncated, unsupported mode)."""


class BusyError(ImageError):
    """Too many large images are being decoded at once; the same request can succeed moments later."""


class WeightsMissingError(InspectError):
    """Pretrained weights are not on disk and cannot be downloaded here."""


class ModelNotTrainedError(InspectError):
    """No checkpoint for this (model, category); the message says how to train one."""


class ModelUnreadableError(ModelNotTrainedError):
    """A model's files are there but cannot be used (bad metadata, a checkpoint that does not fit it).

    A :class:`ModelNotTrainedError` too: the remedy is the same (retrain), and code that retrains a
    missing model (``python -m core setup``) retrains a broken one as well.
    """


class VersionConflictError(InspectError):
    """A model change was computed from a version that is no longer the newest: publishing it would
    silently drop the change made in between (:func:`core.registry.save_bytes` with ``parent``).

    ``parent``: the version the change was computed from; ``newest``: the one published meanwhile,
    described (version, kind, who, when, what).
    """

    def __init__(self, message: str, *, parent: str = "", newest: str = "") -> None:
        super().__init__(message)
        self.parent, self.newest = parent, newest


class PermissionDeniedError(InspectError):
    """The signed-in user's role may not do this (changing a model is an engineer's action)."""


class StoreError(InspectError):
    """The similarity store or history database cannot be opened (corrupt, locked, unreachable)."""


class StoreLockedError(StoreError):
    """The embedded similarity store is open in another process (Qdrant Edge admits one per
    collection). Transient, unlike the others: an upload that meets it is queued, not given up."""


class AuthError(InspectError):
    """A user, password, role or API key cannot be added, removed or read (core.auth)."""


class ResultsFileError(InspectError):
    """The results file cannot be read at all (permissions, a folder in its place), so not replaced."""
