"""The knowledge base: documents read from a directory, chunked, indexed, searched.

Text, Markdown, PDF (pypdf) and HTML (BeautifulSoup) go through LlamaIndex's readers and
`SentenceSplitter`. BM25 (bm25s) is the default: it works offline and is persisted under
the data directory. With `COUNTERSIGN_RETRIEVAL=openai`, chunks are embedded with OpenAI
embeddings (or an OpenAI-compatible server) into a persisted vector index instead.

Building is blocking work and runs in a thread; a search runs in a thread too (BM25) or
over HTTP (embeddings), always under a timeout.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..private_files import make_private_dirs, make_private_tree

log = logging.getLogger(__name__)

EXTENSIONS = (".txt", ".md", ".markdown", ".pdf", ".html", ".htm")
MANIFEST = "countersign-index.json"
CHUNK_SIZE = 512
CHUNK_OVERLAP = 64
BUILTIN_CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of the knowledge base, as retrieved."""

    title: str
    location: str
    text: str
    score: float

    def source(self) -> dict[str, Any]:
        return {"title": self.title, "location": self.location, "snippet": self.text[:300], "score": round(self.score, 4)}


class Retriever(Protocol):
    async def search(self, query: str, top_k: int) -> list[Passage]: ...


class RetrievalMode(str, enum.Enum):
    BM25 = "bm25"
    OPENAI = "openai"


class KnowledgeError(RuntimeError):
    """The knowledge base cannot be read or indexed; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    model: str
    api_key: str
    api_base: str | None


def fingerprint(source_dir: Path) -> str:
    """Changes when a document is added, removed or modified (path, size, mtime)."""
    h = hashlib.sha256()
    for path in sorted(_documents(source_dir)):
        stat = path.stat()
        h.update(f"{path.relative_to(source_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _documents(source_dir: Path) -> list[Path]:
    return [p for p in source_dir.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS]


def _read(source_dir: Path, show_progress: bool) -> list[Any]:
    from llama_index.core import SimpleDirectoryReader
    from llama_index.readers.file import HTMLTagReader

    if not source_dir.is_dir():
        raise KnowledgeError(f"the knowledge directory {source_dir} does not exist (COUNTERSIGN_KNOWLEDGE_DIR)")
    if not _documents(source_dir):
        raise KnowledgeError(f"the knowledge directory {source_dir} holds no {', '.join(EXTENSIONS)} files")
    html = HTMLTagReader(tag="body")
    reader = SimpleDirectoryReader(
        input_dir=str(source_dir), recursive=True, required_exts=list(EXTENSIONS),
        file_extractor={".html": html, ".htm": html}, filename_as_id=True,
    )
    return reader.load_data(show_progress=show_progress)


def _chunks(documents: list[Any], source_dir: Path, show_progress: bool) -> list[Any]:
    from llama_index.core.node_parser import SentenceSplitter

    nodes = SentenceSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP).get_nodes_from_documents(
        documents, show_progress=show_progress)
    for node in nodes:
        path = Path(node.metadata.get("file_path", ""))
        try:
            location = str(path.relative_to(source_dir))
        except ValueError:
            location = path.name
        node.metadata = {"title": _title(node.metadata, path), "location": location,
                         **({"page": node.metadata["page_label"]} if "page_label" in node.metadata else {})}
    return nodes


def _title(metadata: dict[str, Any], path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize() or metadata.get("file_name", "document")


def build_index(source_dir: Path, index_dir: Path, mode: RetrievalMode, *,
                embedding: EmbeddingSettings | None = None, show_progress: bool = False) -> int:
    """(Re)build the index of `source_dir` into `index_dir`; returns the number of chunks."""
    source_dir = source_dir.resolve()
    documents = _read(source_dir, show_progress)
    nodes = _chunks(documents, source_dir, show_progress)
    staging = index_dir.with_name(f"{index_dir.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(staging, ignore_errors=True)
    make_private_dirs(staging)  # and the parents it lacks; existing ones are not the index's to change
    if mode is RetrievalMode.BM25:
        from llama_index.retrievers.bm25 import BM25Retriever

        _quiet_bm25s()
        # No progress bars on stderr (bm25s draws one while saving the corpus).
        BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=8).persist(str(staging), show_progress=False)
    else:
        from llama_index.core import VectorStoreIndex

        index = VectorStoreIndex(nodes, embed_model=_embed_model(embedding), show_progress=show_progress)
        index.storage_context.persist(persist_dir=str(staging))
    (staging / MANIFEST).write_text(json.dumps({
        "mode": mode.value, "source": str(source_dir), "fingerprint": fingerprint(source_dir),
        "documents": len(documents), "chunks": len(nodes),
        "embedding_model": embedding.model if embedding else None,
    }))
    # Private like the rest of the data directory, whatever modes the persister used.
    make_private_tree(staging)
    # Swap in whole, so a reader never sees half an index.
    shutil.rmtree(index_dir, ignore_errors=True)
    staging.rename(index_dir)
    return len(nodes)


def _embed_model(embedding: EmbeddingSettings | None) -> Any:
    if embedding is None:
        raise KnowledgeError("COUNTERSIGN_RETRIEVAL=openai needs OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible server)")
    from llama_index.embeddings.openai import OpenAIEmbedding

    return OpenAIEmbedding(model_name=embedding.model, api_key=embedding.api_key, api_base=embedding.api_base,
                           max_retries=2, timeout=30.0)


def _quiet_bm25s() -> None:
    # bm25s sets its own logger to DEBUG on import; its per-build chatter is not ours to log.
    logging.getLogger("bm25s").setLevel(logging.WARNING)


def index_is_current(source_dir: Path, index_dir: Path, mode: RetrievalMode) -> bool:
    try:
        manifest = json.loads((index_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("mode") == mode.value and manifest.get("fingerprint") == fingerprint(source_dir.resolve())


class KnowledgeBase:
    """Searches a built index. Implements `tools.Retriever`."""

    def __init__(self, retriever: Any, *, timeout: float = 10.0) -> None:
        self._retriever = retriever
        self._timeout = timeout

    @classmethod
    def load(cls, index_dir: Path, mode: RetrievalMode, *, embedding: EmbeddingSettings | None = None,
             timeout: float = 10.0) -> KnowledgeBase:
        if not (index_dir / MANIFEST).exists():
            raise KnowledgeError(f"no index in {index_dir}; build it with `countersign index`")
        if mode is RetrievalMode.BM25:
            from llama_index.retrievers.bm25 import BM25Retriever

            _quiet_bm25s()
            return cls(BM25Retriever.from_persist_dir(str(index_dir)), timeout=timeout)
        from llama_index.core import StorageContext, load_index_from_storage

        index = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(index_dir)),
                                        embed_model=_embed_model(embedding))
        return cls(index.as_retriever(similarity_top_k=8), timeout=timeout)

    async def search(self, query: str, top_k: int) -> list[Passage]:
        # In a thread for both kinds: BM25 scoring is CPU work, and LlamaIndex's in-memory
        # vector store scores synchronously even behind `aretrieve`.
        async with asyncio.timeout(self._timeout):
            found = await asyncio.to_thread(self._retriever.retrieve, query)
        return [
            Passage(title=n.node.metadata.get("title", "document"), location=n.node.metadata.get("location", ""),
                    text=n.node.get_content().strip(), score=float(n.score or 0.0))
            for n in found[:top_k]
        ]


def open_index(source_dir: Path, index_dir: Path, mode: RetrievalMode, *,
               embedding: EmbeddingSettings | None = None) -> KnowledgeBase:
    """The index of `source_dir`, rebuilt first when missing or stale. Blocking: run it in a thread."""
    if not index_is_current(source_dir, index_dir, mode):
        log.info("indexing the knowledge base %s into %s (%s)", source_dir, index_dir, mode.value)
        chunks = build_index(source_dir, index_dir, mode, embedding=embedding)
        log.info("indexed %d chunks", chunks)
    return KnowledgeBase.load(index_dir, mode, embedding=embedding)


async def open_knowledge(source_dir: Path, index_dir: Path, mode: RetrievalMode, *,
                         embedding: EmbeddingSettings | None = None) -> KnowledgeBase:
    return await asyncio.to_thread(open_index, source_dir, index_dir, mode, embedding=embedding)


class LazyKnowledgeBase:
    """Opens (and if needed indexes) the knowledge base on the first search, so a process
    that never drafts never pays for it; `countersign index` builds it ahead of time.
    Implements `Retriever`."""

    def __init__(self, source_dir: Path, index_dir: Path, mode: RetrievalMode, *,
                 embedding: EmbeddingSettings | None = None) -> None:
        self.source_dir = source_dir
        self.index_dir = index_dir
        self.mode = mode
        self.embedding = embedding
        self._opening: asyncio.Future[KnowledgeBase] | None = None

    async def search(self, query: str, top_k: int) -> list[Passage]:
        if self._opening is None or (self._opening.done() and self._opening.exception() is not None):
            # One opening for every caller; shielded, so a caller that times out does not
            # leave the build thread running while a second build starts.
            self._opening = asyncio.ensure_future(
                open_knowledge(self.source_dir, self.index_dir, self.mode, embedding=self.embedding))
        knowledge = await asyncio.shield(self._opening)
        return await knowledge.search(query, top_k)
