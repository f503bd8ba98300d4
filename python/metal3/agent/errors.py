"""The root of the agent's errors: every failure the agent reports derives from `AgentError`.

Each agent module adds its own subclasses next to the code that raises them; the CLI and the
runner catch `AgentError` to report a clear message instead of a traceback.
"""

from __future__ import annotations


class AgentError(Exception):
    """A failure the agent reports to its caller with a clear message (never a crash)."""
