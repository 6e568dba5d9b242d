"""A local webhook receiver (Slack incoming-webhook compatible): records every JSON POST and
answers 200 `ok` as Slack does, or what a test scripts (404 for a deleted webhook, 500, a slow
answer). Used by the notification tests and the demo.

Run standalone: `python -m worker.devstack.webhook_sink --port 9100`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from worker.devstack.fake_claude import FakeReply, RecordedRequest, ScriptedServer

HOOK_PATH = "/services/T000/B000/local-test-hook"


class WebhookSink(ScriptedServer):
    """Accepts POSTs on HOOK_PATH; every request is kept in `requests`."""

    @property
    def url(self) -> str:
        """The webhook URL to configure for a store."""
        return f"{self.base_url}{HOOK_PATH}"

    @property
    def posts(self) -> list[dict[str, Any]]:
        """The JSON bodies received on the hook's path, oldest first."""
        return [r.body for r in self.requests if r.path == HOOK_PATH and r.method == "POST"]

    def precheck(self, request: RecordedRequest) -> FakeReply | None:
        if request.path != HOOK_PATH:
            return FakeReply(404, "no_service")
        return None

    def default_reply(self, request: RecordedRequest) -> FakeReply:
        return FakeReply(200, "ok")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with WebhookSink(port=args.port) as sink:
        print(f"webhook sink: {sink.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
