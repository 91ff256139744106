"""Microsoft 365 Agents Playground, Microsoft's local Teams simulator, as the bot sees it.

The playground sends unauthenticated activities, so the bot meets it only in the
development no-auth mode (COUNTERSIGN_BOT_INSECURE_NO_AUTH). Its identities are fixed
(its mock tenant, its user "Alex Wilber"; verified against version 0.2.28, see
../shared/notes/agents-playground.md). Pure constants and one check: no SDK, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

NPM_PACKAGE = "@microsoft/m365agentsplayground"
NPM_VERSION = "0.2.28"  # the version tests/playground_js pins and the demo names
TENANT_ID = "00000000-0000-0000-0000-0000000000001"
USER_AAD_OBJECT_ID = "00000000-0000-0000-0000-0000000000020"
USER_EMAIL = "alexw@example.com"  # what its member API answers for that user
USER_NAME = "Alex Wilber"
# Its personal chat's id, passed to it as --conversation-id (any string works).
DEMO_CONVERSATION_ID = "countersign-demo"


def insecure_tenants_problem(tenants: Iterable[str]) -> str | None:
    """Why the no-auth mode must not start with these allowed tenants, or None.

    Without authentication anyone who reaches /api/messages can claim to be any user of
    any listed tenant; only the playground's mock tenant, which no real organisation has,
    keeps that harmless. So the mode can never serve a real tenant by mistake."""
    others = sorted({t.strip().lower() for t in tenants if t.strip()} - {TENANT_ID})
    if not others:
        return None
    return (f"COUNTERSIGN_BOT_INSECURE_NO_AUTH accepts unauthenticated activities, so it serves only the "
            f"Agents Playground's tenant {TENANT_ID}; COUNTERSIGN_TEAMS_ALLOWED_TENANTS also lists "
            f"{', '.join(others)}: remove them, or set MicrosoftAppId and MicrosoftAppPassword to serve a real "
            "tenant with authentication")
