"""The errors of Ray mode.

* TwinkleError (twinkle.errors)
    * ClusterResourceError (ConfigError): a DeviceGroup the Ray cluster cannot hold; says what was asked and what
      the cluster has
    * RemoteCallError (RuntimeError): a component's method (or constructor) raised inside a Ray worker; carries
      the method, the rank, the remote exception type and traceback, and the original exception as ``__cause__``
      when it could travel
"""

from __future__ import annotations

from twinkle.errors import ConfigError, TwinkleError

__all__ = ["ClusterResourceError", "RemoteCallError"]


class ClusterResourceError(ConfigError):
    """A DeviceGroup the Ray cluster cannot satisfy (asked vs available in the message)."""


class RemoteCallError(TwinkleError, RuntimeError):
    """A call that failed inside a Ray worker.

    Attributes:
        method: ``Class.method`` that failed (``Class.__init__`` for construction).
        rank: the worker's rank in its group.
        remote_type: the class name of the exception raised in the worker.
        remote_traceback: the worker's formatted traceback.
    """

    def __init__(self, message: str, method: str = "", rank: int | None = None, remote_type: str = "",
                 remote_traceback: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.rank = rank
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.cause: BaseException | None = None

    def __reduce__(self):
        # keep the fields (and the original exception) when Ray pickles the error back to the driver
        return (_rebuild_remote_error, (self.args[0], self.method, self.rank, self.remote_type,
                                        self.remote_traceback, self.cause))


def _rebuild_remote_error(message, method, rank, remote_type, remote_traceback, cause):
    err = RemoteCallError(message, method, rank, remote_type, remote_traceback)
    err.cause = cause
    return err
