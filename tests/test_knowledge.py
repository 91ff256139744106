"""Retrieval: the bundled policy corpus, every document format, BM25 and OpenAI embeddings
(against the local OpenAI-compatible server), index freshness, `countersign index`; and
the agent's configuration: plugins, the OpenAI-like client, refusals at start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.agent.knowledge import (
    BUILTIN_CORPUS,
    EmbeddingSettings,
    KnowledgeBase,
    KnowledgeError,
    LazyKnowledgeBase,
    RetrievalMode,
    build_index,
    open_knowledge,
)
from service.agent.tools import ToolConfigError
from service.app import create_app

from .conftest import StartService
from .conftest import test_settings as settings_for
from .peers.openai_server import Say, ScriptedLLM, call
from .peers.pdf import make_pdf
from .peers.smtp import SmtpServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

# Customer questions and the policy document that answers each.
QUESTIONS = [
    ("How long do I have to return a jacket that doesn't fit?", "returns-and-refunds.md"),
    ("My parcel has not moved in tracking for two weeks", "shipping-and-delivery.md"),
    ("The zip of my tent broke after a year, is that covered?", "warranty.pdf"),
    ("Please delete all the personal data you hold about me", "privacy-and-data.html"),
    ("I found the same boots cheaper at another shop", "price-match.html"),
    ("How do I cancel my club membership and get my money back?", "subscriptions.md"),
    ("You sent me the wrong item in my order", "damaged-or-wrong-items.md"),
    ("I forgot my password and cannot sign in", "account-and-password.txt"),
    ("Do you offer express delivery?", "shipping-and-delivery.md"),
    ("Can I claim warranty on a gift without a receipt?", "warranty.pdf"),
]


async def test_bm25_puts_the_right_policy_first_for_every_question(tmp_path: Path) -> None:
    kb = await open_knowledge(BUILTIN_CORPUS, tmp_path / "index", RetrievalMode.BM25)
    for question, expected in QUESTIONS:
        passages = await kb.search(question, 3)
        assert passages[0].location == expected, (question, [p.location for p in passages])


async def test_openai_embeddings_through_a_compatible_server(tmp_path: Path, llm: ScriptedLLM) -> None:
    embedding = EmbeddingSettings(model="text-embedding-3-small", api_key="sk-test", api_base=llm.url)  # type: ignore[attr-defined]
    kb = await open_knowledge(BUILTIN_CORPUS, tmp_path / "index", RetrievalMode.OPENAI, embedding=embedding)
    built = llm.embedding_requests
    assert built >= 1
    hits = 0
    for question, expected in QUESTIONS:
        passages = await kb.search(question, 3)
        hits += passages[0].location == expected
    # Hashed bag-of-words vectors are cruder than BM25, but they are real vectors through
    # the real client and persisted index: most questions still find their document.
    assert hits >= 7, hits
    assert llm.embedding_requests == built + len(QUESTIONS)  # one query embedding per search
    reloaded = KnowledgeBase.load(tmp_path / "index", RetrievalMode.OPENAI, embedding=embedding)
    assert (await reloaded.search(QUESTIONS[0][0], 1))[0].location == QUESTIONS[0][1]


async def test_every_format_is_read_with_its_location(tmp_path: Path) -> None:
    docs = tmp_path / "kb"
    (docs / "nested").mkdir(parents=True)
    (docs / "notes.txt").write_text("Gift cards never expire and can be used online.")
    (docs / "faq.md").write_text("# Loyalty points\n\nLoyalty points are worth one cent each.")
    (docs / "nested" / "page.html").write_text(
        "<html><head><title>x</title><script>var ignored = 'javascript';</script></head>"
        "<body><h1>Store hours</h1><p>Our Lisbon store opens at nine.</p></body></html>")
    (docs / "manual.pdf").write_bytes(make_pdf([["Cover page"], ["Headlamp batteries last forty hours."]]))
    (docs / "ignored.bin").write_bytes(b"\x00\x01")
    assert build_index(docs, tmp_path / "index", RetrievalMode.BM25) >= 4
    kb = KnowledgeBase.load(tmp_path / "index", RetrievalMode.BM25)
    for query, location, text in [
        ("gift card expiry", "notes.txt", "Gift cards never expire"),
        ("loyalty points value", "faq.md", "one cent each"),
        ("Lisbon store opening hours", "nested/page.html", "opens at nine"),
        ("headlamp battery life", "manual.pdf", "forty hours"),
    ]:
        [first, *_] = await kb.search(query, 2)
        assert first.location == location and text in first.text, (query, first)
    assert "javascript" not in (await kb.search("Lisbon store", 1))[0].text


def test_building_an_index_makes_private_only_the_directories_it_creates(tmp_path: Path) -> None:
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "notes.txt").write_text("Gift cards never expire and can be used online.")
    shared = tmp_path / "shared"  # e.g. the home directory holding a data directory: the user's own, 0755
    shared.mkdir()
    os.chmod(shared, 0o755)
    build_index(docs, shared / "index", RetrievalMode.BM25)
    assert (shared.stat().st_mode & 0o777) == 0o755  # not ours to tighten
    assert ((shared / "index").stat().st_mode & 0o777) == 0o700
    build_index(docs, shared / "new" / "deeper" / "index", RetrievalMode.BM25)  # missing parents: made private
    for made in (shared / "new", shared / "new" / "deeper", shared / "new" / "deeper" / "index"):
        assert (made.stat().st_mode & 0o777) == 0o700, made
    assert (shared.stat().st_mode & 0o777) == 0o755


async def test_a_changed_knowledge_directory_is_indexed_again(tmp_path: Path) -> None:
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "a.md").write_text("Bicycles are serviced for free in the first year.")
    kb = await open_knowledge(docs, tmp_path / "index", RetrievalMode.BM25)
    assert "Bicycles" in (await kb.search("bicycle service", 1))[0].text
    (docs / "b.md").write_text("Kayaks can be rented by the day.")
    kb = await open_knowledge(docs, tmp_path / "index", RetrievalMode.BM25)
    assert (await kb.search("kayak rental", 1))[0].location == "b.md"


async def test_concurrent_first_searches_share_one_index_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.agent.knowledge as knowledge

    builds: list[Path] = []
    real_build = knowledge.build_index

    def counting_build(*args: object, **kwargs: object) -> int:
        builds.append(args[1])  # type: ignore[arg-type]
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(knowledge, "build_index", counting_build)
    lazy = LazyKnowledgeBase(BUILTIN_CORPUS, tmp_path / "index", RetrievalMode.BM25)
    answers = await asyncio.gather(*(lazy.search(q, 1) for q, _ in QUESTIONS))
    assert [a[0].location for a in answers] == [expected for _, expected in QUESTIONS]
    assert builds == [tmp_path / "index"]


def test_missing_or_empty_knowledge_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="does not exist"):
        build_index(tmp_path / "nowhere", tmp_path / "index", RetrievalMode.BM25)
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnowledgeError, match="holds no"):
        build_index(tmp_path / "empty", tmp_path / "index", RetrievalMode.BM25)


def test_countersign_index_builds_with_a_progress_bar(tmp_path: Path) -> None:
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "service", "index"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Loading files: 100%" in done.stderr and "Parsing nodes: 100%" in done.stderr
    assert done.stdout.startswith("indexed ") and "chunks from" in done.stdout
    assert (tmp_path / "data" / "index" / "bm25" / "countersign-index.json").exists()
    failed = subprocess.run([sys.executable, "-m", "service", "index"], capture_output=True, text=True, timeout=120,
                            env={**env, "COUNTERSIGN_KNOWLEDGE_DIR": str(tmp_path / "missing")})
    assert failed.returncode == 2 and "does not exist" in failed.stderr


def test_service_refuses_to_start_with_bad_agent_settings(tmp_path: Path, db_url: str) -> None:
    with pytest.raises(KnowledgeError, match="not a directory"):
        create_app(settings_for(tmp_path, db_url, None, knowledge_dir=tmp_path / "missing"))
    with pytest.raises(ToolConfigError, match="unknown tools"):
        create_app(settings_for(tmp_path, db_url, None, agent_tools=["search_knowledge_base", "rm_rf"]))
    with pytest.raises(ToolConfigError, match="cannot propose"):
        create_app(settings_for(tmp_path, db_url, None, tools_requiring_human_confirmation=["search_knowledge_base"]))
    with pytest.raises(ToolConfigError, match="cannot load agent plugin"):
        create_app(settings_for(tmp_path, db_url, None, agent_plugins=["tests.no_such_module:TOOLS"]))
    with pytest.raises(KnowledgeError, match="needs OPENAI_API_KEY"):
        create_app(settings_for(tmp_path, db_url, None, retrieval="openai"))


@SQLITE_ONLY
async def test_a_plugin_tool_and_an_openai_compatible_model(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [call("lookup_order", order_number="123456"),
                  call("send_customer_email", subject="Your order", body="Dear Ann,\n\nIt was delivered."),
                  Say("unused")]
    # A model name OpenAI does not know: the OpenAI-like client, as for vLLM or Ollama.
    service = await start_service(smtp_server, openai_base_url=llm.url, llm_model="local-llama-3",  # type: ignore[attr-defined]
                                  agent_plugins=["tests.agent_plugin:TOOLS"])
    accepted = await service.create_run({"request": "Where is order 123456?",
                                         "customer": {"email": "ann@example.com", "name": "Ann"}})
    await service.wait_status(accepted["id"], "awaiting_approval")
    first, second = llm.chat_requests
    assert first["model"] == "local-llama-3"
    assert {t["function"]["name"] for t in first["tools"]} == {"search_knowledge_base", "send_customer_email",
                                                              "lookup_order"}
    answer = [m for m in second["messages"] if m["role"] == "tool"][-1]
    assert answer["content"].startswith("Order 123456 for ann@example.com: delivered")
