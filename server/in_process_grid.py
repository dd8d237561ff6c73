"""A Grid whose nodes are ClientApp handlers called in this process: no Ray, no SuperLink.

For tests and benchmarks that need the real server loop and ClientApp without Flower's
runtime (its start-up costs tens of seconds).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp handlers called in this process (no Ray, no SuperLink)."""

    def __init__(
        self,
        handler: Callable[[Message, Context], Message],
        run_config: dict,
        num_nodes: int,
        query: Callable[[Message, Context], Message] | None = None,
        evaluate: Callable[[Message, Context], Message] | None = None,
    ):
        """`handler` answers train messages; `query` (default: the ClientApp's handshake)
        answers query messages; `evaluate` (default: the ClientApp's) evaluate messages."""
        if query is None:
            from clients.client_app import handshake as query
        if evaluate is None:
            from clients.client_app import evaluate
        # messages need the run/node identity that a real runtime would set
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.handler = handler
        self.query = query
        run_id = secrets.randbits(63)  # random, like Flower's: runs never share a feature store
        self.evaluate = evaluate
        self.contexts = {
            1000 + node: Context(
                run_id=run_id,
                node_id=1000 + node,
                node_config={"partition-id": node, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node in range(num_nodes)
        }
        self.sent: list[Message] = []  # the train messages
        self.queried: list[Message] = []  # the query messages (the handshake)
        self.evaluated: list[Message] = []  # the evaluate messages (eval-local)
        self._ids = itertools.count()

    def set_run(self, run) -> None:  # pragma: no cover - not used in-process
        self._run = run

    @property
    def run(self):  # pragma: no cover
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            kind = message.metadata.message_type
            query = kind.startswith(MessageType.QUERY)
            evaluate = kind == MessageType.EVALUATE
            handler = self.query if query else self.evaluate if evaluate else self.handler
            (self.queried if query else self.evaluated if evaluate else self.sent).append(message)
            context = self.contexts[message.metadata.dst_node_id]
            try:
                replies.append(handler(message, context))
            except Exception as error:  # noqa: BLE001 - Flower turns any ClientApp error into a reply
                replies.append(Message(Error(code=0, reason=repr(error)), reply_to=message))
        return replies
