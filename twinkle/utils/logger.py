"""``get_logger``: the one ``'twinkle'`` logger, configured once, that logs on the local master rank only.

Upstream's signature: ``get_logger(log_file=None, log_level=None, file_mode='w', only_local_master=True)``. The first
positional argument is a *file path* (a FileHandler is added), not a logger name. Library modules that want a
child logger (``twinkle.model``, ...) call ``get_logger('twinkle.model')``: a first argument that starts with
``twinkle`` and has no path separator or file suffix is taken as a child name, which keeps the old internal calls
(and those of branches written against them) from creating a file called ``twinkle.model``.

Ranks: only the local master (``LOCAL_RANK`` unset or 0) logs below ERROR; set ``only_local_master=False`` to log
everywhere. ``logger.info(msg, ranks='all')`` prints on every rank, prefixed ``[rank<LOCAL_RANK>]``.
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

__all__ = ["get_logger"]

_NAME = "twinkle"
_FORMAT = "[%(asctime)s][%(levelname)s:twinkle] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
_configured = False
_seen: set = set()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "-1"))


def _parse_level(value: Any) -> int:
    if value is None:
        value = os.environ.get("LOG_LEVEL") or logging.INFO
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.lstrip("-").isdigit() else logging.getLevelName(value.upper())
    return value if isinstance(value, int) else logging.INFO


def _looks_like_name(arg: str) -> bool:
    return arg.startswith(_NAME) and os.sep not in arg and os.path.splitext(arg)[1].lstrip(".") not in (
        "log", "txt", "out")


def _add_methods(logger: logging.Logger) -> None:
    """The extra methods upstream's logger has: ``ranks=``, ``*_once``, ``*_if``."""
    if getattr(logger, "_twinkle_methods", False):
        return
    plain_info, plain_warning = logger.info, logger.warning

    def _emit(plain, msg, *args, ranks: str = "master", **kw):
        if ranks == "all":
            # bypass the rank-based level: emit through a record at the handler level
            prefix = f"[rank{max(_local_rank(), 0)}] "
            level = logging.INFO if plain is plain_info else logging.WARNING
            record = logger.makeRecord(logger.name, level, "(twinkle)", 0, prefix + str(msg), args, None)
            for handler in logger.handlers:
                handler.handle(record)
            return
        plain(msg, *args, **kw)

    def info(self, msg, *args, ranks: str = "master", **kw):
        _emit(plain_info, msg, *args, ranks=ranks, **kw)

    def warning(self, msg, *args, ranks: str = "master", **kw):
        _emit(plain_warning, msg, *args, ranks=ranks, **kw)

    def _once(plain, msg, hash_id=None):
        key = (plain.__name__, hash_id if hash_id is not None else msg)
        if key not in _seen:
            _seen.add(key)
            plain(msg)

    logger.info = types.MethodType(info, logger)  # type: ignore[method-assign]
    logger.warning = types.MethodType(warning, logger)  # type: ignore[method-assign]
    logger.info_once = lambda msg, hash_id=None: _once(plain_info, msg, hash_id)  # type: ignore[attr-defined]
    logger.warning_once = lambda msg, hash_id=None: _once(plain_warning, msg, hash_id)  # type: ignore[attr-defined]
    logger.info_if = lambda msg, cond: plain_info(msg) if cond else None  # type: ignore[attr-defined]
    logger.warning_if = lambda msg, cond: plain_warning(msg) if cond else None  # type: ignore[attr-defined]
    logger._twinkle_methods = True  # type: ignore[attr-defined]


def get_logger(
    log_file: str | None = None,
    log_level: int | str | None = None,
    file_mode: str = "w",
    only_local_master: bool = True,
) -> logging.Logger:
    """The ``'twinkle'`` logger (stderr, ``[time][LEVEL:twinkle] msg``), quiet below ERROR off the local master.

    Args:
        log_file: also write to this file (added once; later calls add one only if the logger has none).
        log_level: a level name or number; default env ``LOG_LEVEL``, else INFO.
        file_mode: the mode the log file is opened with.
        only_local_master: when False, every rank logs at ``log_level``.
    """
    global _configured
    if log_file is not None and _looks_like_name(log_file):
        get_logger()
        return logging.getLogger(log_file)
    logger = logging.getLogger(_NAME)
    if not _configured:
        level = _parse_level(log_level)
        for handler in list(logger.handlers):
            if getattr(handler, "_twinkle", False):
                logger.removeHandler(handler)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
        handler._twinkle = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
        # upstream silences the root logger's stream handlers below ERROR (libraries that log twice)
        for root_handler in logging.getLogger().handlers:
            if type(root_handler) is logging.StreamHandler:
                root_handler.setLevel(logging.ERROR)
        is_local_master = _local_rank() in (-1, 0)
        logger.setLevel(level if (is_local_master or not only_local_master) else logging.ERROR)
        _add_methods(logger)
        _configured = True
    if log_file and not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        file_handler = logging.FileHandler(log_file, mode=file_mode)
        file_handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
        logger.addHandler(file_handler)
    return logger


def _reset_for_tests() -> None:
    """Forget the configuration so the next call reconfigures (tests change LOCAL_RANK between calls)."""
    global _configured
    _configured = False
    logger = logging.getLogger(_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()
    _seen.clear()
