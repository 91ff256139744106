"""Which Microsoft Entra tenants the bot serves (COUNTERSIGN_TEAMS_ALLOWED_TENANTS).

A MultiTenant bot can be reached by a user of any tenant: the Bot Connector's token says
the activity came through Teams, not from which organisation. Every activity, every
member record and every card's destination is therefore checked against this list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class TenantNotAllowed(PermissionError):
    def __init__(self, tenant_id: str | None, what: str) -> None:
        named = f"tenant {tenant_id!r}" if tenant_id else "no tenant"
        super().__init__(f"{what} names {named}, which is not in COUNTERSIGN_TEAMS_ALLOWED_TENANTS")
        self.tenant_id = tenant_id


class AllowedTenants:
    def __init__(self, tenants: Iterable[str]) -> None:
        self.tenants = frozenset(t.strip().lower() for t in tenants if t.strip())

    def allows(self, tenant_id: str | None) -> bool:
        return tenant_id is not None and tenant_id.strip().lower() in self.tenants

    def check(self, tenant_id: str | None, what: str) -> None:
        if not self.allows(tenant_id):
            raise TenantNotAllowed(tenant_id, what)

    def check_activity(self, data: dict[str, Any]) -> str:
        """The tenant of an activity (its JSON), if allowed. Teams names it in
        `channelData.tenant.id` and `conversation.tenantId`; every one present must be
        allowed (a mismatch is refused). Read from the JSON: the SDK's model maps only
        `conversation.tenantID`, so `tenantId` would be lost in deserialising."""
        channel_data = data.get("channelData")
        tenant = channel_data.get("tenant") if isinstance(channel_data, dict) else None
        conversation = data.get("conversation")
        named = [tenant.get("id") if isinstance(tenant, dict) else None]
        if isinstance(conversation, dict):
            named += [conversation.get("tenantId"), conversation.get("tenantID")]
        present = [t for t in named if t]
        if not present:
            raise TenantNotAllowed(None, "the activity")
        for tenant_id in present:
            self.check(tenant_id if isinstance(tenant_id, str) else repr(tenant_id), "the activity")
        return str(present[0])
