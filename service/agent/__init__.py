"""The drafting agent: a LlamaIndex workflow that searches the knowledge base, drafts a
reply and proposes it as a gated tool call, paused in the database while a human decides.

events.py    the workflow's events and state (what a snapshot holds)
workflow.py  the agent loop (LLM step, tools, gate, gather)
tools.py     the tool registry and the built-in tools
messages.py  the conversation as plain dicts, and the prompts
knowledge.py reading, indexing (BM25 or OpenAI embeddings) and searching documents
llm.py       which LLM drafts (OpenAI, OpenAI-compatible, offline) and its failures as job outcomes
offline.py   the offline drafter
runner.py    the agent.step job: start or resume a run from its snapshot, commit what it did
"""
