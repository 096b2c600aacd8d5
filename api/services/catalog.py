"""The model catalog as the API sees it: the built-in models plus the operator's models file (GRPO_MODELS_FILE)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from grpo_core.catalog import ModelsFileError, load_catalog
from grpo_core.spec import BASE_MODELS, BaseModelSpec
from service_core.settings import get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[Path, tuple[tuple[int, int] | None, dict[str, BaseModelSpec]]] = {}


def model_catalog() -> dict[str, BaseModelSpec]:
    """Every model a job may name. The models file is read again when it changes (`grpo models add` takes effect
    without a restart). The API reads it at start-up, so a bad file stops it there with the file's problems; a file
    broken later is logged and the models it last held stay, rather than every job submission failing."""
    path = get_settings().models_file
    if path is None:
        return BASE_MODELS
    try:
        stat = path.stat()
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    with _lock:
        known = _loaded.get(path)
        if known is not None and known[0] == version:
            return known[1]
        try:
            catalog = load_catalog(path)
        except ModelsFileError as error:
            if known is None:
                raise
            log.error("%s; the models it held before stay in use", error)
            return known[1]
        _loaded[path] = (version, catalog)
        return catalog
