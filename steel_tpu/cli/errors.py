"""Which exceptions are the user's to fix, as the one line the CLI prints for them (None: a bug, show it all)."""

import errno
import json
import sys

# TensorFlow errors that mean bad input, a missing or unreadable file, or a device too small for the settings.
_TF_USER_ERRORS = ("DataLossError", "NotFoundError", "PermissionDeniedError", "UnauthenticatedError",
                   "InvalidArgumentError", "FailedPreconditionError", "ResourceExhaustedError", "AlreadyExistsError")
_GCS_AUTH_HINT = ("GCS credentials: in Colab run google.colab.auth.authenticate_user(); elsewhere "
                  "`gcloud auth application-default login` or a service account with access to the bucket")


# What to do about a fault of the machine rather than of the input: the same command resumes once it is fixed.
_ENVIRONMENT_HINTS = {
    errno.ENOSPC: " (the disk is full: free space there, then run the same command again; it resumes)",
    errno.EDQUOT: " (over the disk quota: free space there, then run the same command again; it resumes)",
    errno.EROFS: " (a read-only file system: give a writable location)",
}


def _names(error):
    return {cls.__name__ for cls in type(error).__mro__}


def _tf_error(error):
    tf = sys.modules.get("tensorflow")  # never imported here: a command that did not load it raised no TF error
    if tf is None or not isinstance(error, tf.errors.OpError) or type(error).__name__ not in _TF_USER_ERRORS:
        return None
    # An OpError's message carries the graph's node context on later lines: the first says what failed.
    first = (error.message or str(error)).strip().splitlines()[0]
    if type(error).__name__ == "ResourceExhaustedError":
        first += " (out of memory: lower the batch size, e.g. --set segment.data.batch_size=...)"
    return f"{type(error).__name__}: {first}"


def _buckets(paths):
    """'gs://a, gs://b': the buckets a command was given (GCS errors name none), or 'GCS'."""
    found = sorted({"gs://" + p[len("gs://"):].split("/")[0] for p in paths if str(p).startswith("gs://")})
    return ", ".join(found) or "GCS"


def _gcs_error(error, paths):
    names, where = _names(error), _buckets(paths)
    if names & {"GoogleAuthError", "DefaultCredentialsError", "RefreshError"}:
        return f"{where}: {error} ({_GCS_AUTH_HINT})"
    if "HttpError" in names and getattr(error, "code", None) in (401, 403):
        return f"{where}: access denied: {error} ({_GCS_AUTH_HINT})"
    if "HttpError" in names and getattr(error, "code", None) == 404:
        return f"{where}: not found on GCS (does the bucket exist?): {error}"
    # aiohttp's connection errors (gcsfs gives up after its retries): no answer at all from the storage endpoint.
    if names & {"ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError"}:
        return (f"{where}: cannot reach Google Cloud Storage ({error}); check the network (or STORAGE_EMULATOR_HOST "
                f"if set) and the bucket name; {_GCS_AUTH_HINT}")
    return None


def user_error(error, *, paths=()):
    """The one line to print for an error the user can fix, or None for anything else (a bug: show it all).

    `paths`: the command's path arguments, so that a GCS error, which names no bucket, can name them.
    """
    message = _tf_error(error) or _gcs_error(error, paths)
    if message:
        return message
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error}"
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, FileNotFoundError):
        target = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
        return f"{error.strerror or type(error).__name__}: {target}{_ENVIRONMENT_HINTS.get(error.errno, '')}"
    if isinstance(error, (ValueError, FileNotFoundError, PermissionError)):
        return str(error)
    return None
