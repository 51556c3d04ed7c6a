"""What the scheduler tells agent awareness, and asks it: the one small protocol between them
(gateway/awareness/runs.py implements it; `NO_AWARENESS` is the gateway without prediction). The
scheduler never imports the awareness package: the app hands it one of these at construction."""

from __future__ import annotations

from typing import Protocol

from common.workflow.run import WorkflowRun


class AwarenessHooks(Protocol):
    def on_advance(self, run: WorkflowRun) -> None:
        """Nodes finished, became ready or were skipped: plan again."""

    def prefetched_at(self, run: WorkflowRun, node: str) -> str | None:
        """The worker holding (or fetching) the node's prefix, for the route decision to prefer."""

    def on_dispatch(self, run: WorkflowRun, node: str, url: str) -> None:
        """The node was sent to `url`."""

    def on_call_started(self, run: WorkflowRun, node: str) -> None:
        """The node's call produced its first token."""

    def on_dropped(self, run: WorkflowRun) -> None:
        """The run stopped here without ending: its lease was lost, or it was handed back for resumption."""

    def on_tokens(self, run: WorkflowRun, node: str, text: str) -> None:
        """More of the node's output streamed in."""

    async def on_workflow_end(self, run: WorkflowRun, status: str) -> None:
        """The workflow ended: release what was held for it."""


class NoAwareness:
    """Awareness switched off: no prediction, no prefetch, no pins."""

    def on_advance(self, run: WorkflowRun) -> None:
        pass

    def prefetched_at(self, run: WorkflowRun, node: str) -> str | None:
        return None

    def on_dispatch(self, run: WorkflowRun, node: str, url: str) -> None:
        pass

    def on_call_started(self, run: WorkflowRun, node: str) -> None:
        pass

    def on_dropped(self, run: WorkflowRun) -> None:
        pass

    def on_tokens(self, run: WorkflowRun, node: str, text: str) -> None:
        pass

    async def on_workflow_end(self, run: WorkflowRun, status: str) -> None:
        pass


NO_AWARENESS = NoAwareness()
