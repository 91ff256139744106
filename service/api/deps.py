"""What handlers reach through `request.app[SERVICES]`; built once in `service.app`."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..callback_policy import CallbackPolicy
from ..config import Settings
from ..decisions import Decisions
from ..foreground import Foreground
from ..jobs import JobQueue
from ..keys import ApiKeys
from ..runs import Runs
from ..store.db import Store
from .auth import ApiAuth


@dataclass
class Services:
    settings: Settings
    store: Store
    jobs: JobQueue
    runs: Runs
    decisions: Decisions
    auth: ApiAuth
    keys: ApiKeys
    foreground: Foreground
    callback_policy: CallbackPolicy


SERVICES = web.AppKey("services", Services)
