"""What the Rust runtime calls back into, handed to ``_runtime.Server(hooks=...)`` once instead of
imported by name at call time: the contract between the two sides in one place
(runtime/src/python/hooks.rs reads these attributes)."""

from __future__ import annotations

from types import SimpleNamespace

from . import background, responses
from ._logging import logger

RUNTIME_HOOKS = SimpleNamespace(
    # Shutdown problems (a lifespan shutdown that failed, requests cancelled at the shutdown timeout).
    logger=logger,
    # Queues a response's ``background`` on the running loop, after the response is handed over.
    run_after_response=background.run_after_response,
    # The coroutine that feeds a StreamingResponse's chunks to the runtime's ChunkSender.
    pump=responses._pump,
)
