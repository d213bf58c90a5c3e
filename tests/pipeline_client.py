"""Paddle Serving's own gRPC client, imported without what its import does to this process.

`paddle_serving_server.pipeline` configures logging when imported (`logging.config.dictConfig`):
it disables every logger that exists then, sends the root logger's DEBUG records to files in
`PipelineServingLogs/` of the current directory, and would silence the router's loggers for
every later test that checks a log line. The import here puts all of that back.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any


def pipeline_client_class() -> Any:
    """`paddle_serving_server.pipeline.PipelineClient`, the process's logging left as it was."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    enabled = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.disabled
    ]
    cwd = os.getcwd()
    # Its log files go here, not into the checkout; kept: its own loggers go on writing there.
    os.chdir(tempfile.mkdtemp(prefix="paddle-serving-client-"))
    try:
        from paddle_serving_server.pipeline import PipelineClient
    finally:
        os.chdir(cwd)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for logger in enabled:
            logger.disabled = False
    return PipelineClient
