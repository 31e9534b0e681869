"""What the intake pipeline made of one callback (``Relay.receive``).

- ``Accepted``: a new state of the task, stored and emitted (its deliveries are queued).
- ``Duplicate``: the same update again (providers retry); stored once, emitted once.
- ``Superseded``: an update older than the task's latest (a late "running" after
  "succeeded"), stored for the record, never emitted.
- ``Held``: a callback that must be confirmed with its provider's API first
  (``service.holds``); stored in its watch, emitted only as the API confirms it.

Every outcome is durable when it is returned: the HTTP answer is 2xx only then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    outcome: ClassVar[str] = "accepted"


@dataclass(frozen=True, slots=True)
class Duplicate:
    event_id: str
    #: The update repeated was itself stored as superseded (so this one is too).
    superseded: bool = False
    outcome: ClassVar[str] = "duplicate"


@dataclass(frozen=True, slots=True)
class Superseded:
    event_id: str
    outcome: ClassVar[str] = "superseded"


@dataclass(frozen=True, slots=True)
class Held:
    #: The watch holding the callback until the provider's API answers.
    watch_id: str
    outcome: ClassVar[str] = "held"


Received = Accepted | Duplicate | Superseded | Held
