"""An agent plugin, as a team would write one: a tool named in COUNTERSIGN_AGENT_PLUGINS."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.agent.tools import ToolAnswer, ToolContext, ToolSpec


class OrderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_number: str = Field(pattern=r"^[0-9]{4,10}$")


async def lookup_order(ctx: ToolContext, args: OrderArgs) -> ToolAnswer:
    return ToolAnswer(f"Order {args.order_number} for {ctx.customer_email}: delivered 2026-10-30, 1 jacket (size M).")


TOOLS = [ToolSpec(name="lookup_order", description="Look up an order of this customer by its number.",
                  parameters=OrderArgs, run=lookup_order)]
