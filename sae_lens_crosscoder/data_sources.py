"""Text for the paired store: datasets, chat rendering, mixing, and packing into contexts.

A run reads one dataset (``dataset_path``) or a mix (``datasets: [{path, weight, ...}]``).
Each source is a HF hub dataset (streamed), a local file (``.txt``, ``.json``/``.jsonl``,
``.parquet``, ``.csv``) or a local directory (files, or a ``save_to_disk`` dataset). Rows
are one of:

- text (a ``text``-like column), tokenised without special tokens;
- pretokenized ids (``input_ids`` / ``tokens``);
- chat (``messages`` / ``conversation``: a list of ``{role, content}``), rendered with the
  tokenizer's chat template. Tokens written by the template rather than taken from a
  message (``<start_of_turn>user\\n``...) are marked so they can be excluded.

`TokenStream` packs documents into ``context_size`` windows the way SAELens's
``concat_and_batch_sequences`` does (BOS at the start of each window when ``prepend_bos``,
a separator token between documents, no BOS doubled), and mixes sources by **token
share**: the next document comes from the source furthest below ``weight`` of the tokens
so far. That rule is deterministic, so the stream's position is a small JSON state
(rows read per source, offset into the current document) and a resumed run reads exactly
the tokens the interrupted one would have, by skipping rows instead of re-tokenising.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_crosscoder.errors import CrosscoderUserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from sae_lens_crosscoder.config import CrosscoderRunnerConfig

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "content", "document", "raw_content", "problem")
TOKEN_COLUMNS = ("input_ids", "tokens")
CHAT_COLUMNS = ("messages", "conversation", "conversations", "chat")
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TOKENIZE_BLOCK = 64  # rows tokenised per call: batched fast tokenisation, small lookahead


@dataclass
class SourceSpec:
    """One dataset of the mix (the keys of an entry of ``datasets``)."""

    path: str
    weight: float = 1.0
    split: str = "train"
    name: str | None = None  # HF config name (e.g. "sample-10BT")
    text_column: str | None = None
    chat: bool | None = None  # None: detected from the columns
    chat_column: str | None = None
    tokens_column: str | None = None
    is_tokenized: bool | None = None
    streaming: bool | None = None  # None: the run's `streaming`


def source_specs(cfg: CrosscoderRunnerConfig) -> list[SourceSpec]:
    if cfg.datasets and cfg.dataset_path:
        raise CrosscoderUserError("set dataset_path (one dataset) or datasets (a mix), not both")
    if cfg.dataset_path:
        entries: list[dict[str, Any]] = [{"path": cfg.dataset_path}]
    elif cfg.datasets:
        entries = list(cfg.datasets)
    else:
        raise CrosscoderUserError("live training needs text: set dataset_path, or datasets: [{path, weight}, ...]")
    valid = {f.name for f in fields(SourceSpec)}
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise CrosscoderUserError(f"datasets[{i}] must be a mapping with a 'path' key, got {entry!r}")
        unknown = sorted(set(entry) - valid)
        if unknown:
            raise CrosscoderUserError(
                f"datasets[{i}] has unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}"
            )
        spec = SourceSpec(**entry)
        if "split" not in entry:
            spec.split = cfg.dataset_split
        if spec.streaming is None:
            spec.streaming = cfg.streaming
        if spec.is_tokenized is None and cfg.is_dataset_tokenized is not None:
            spec.is_tokenized = cfg.is_dataset_tokenized
        if not (isinstance(spec.weight, (int, float)) and spec.weight > 0):
            raise CrosscoderUserError(f"datasets[{i}] ({spec.path}) has weight {spec.weight!r}; weights must be > 0")
        specs.append(spec)
    return specs


# ---- opening datasets ----------------------------------------------------------------------
def open_dataset(spec: SourceSpec) -> Any:
    """A `datasets.Dataset` or `IterableDataset` for one source."""
    import datasets

    path = Path(spec.path).expanduser()
    streaming = bool(spec.streaming)
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise CrosscoderUserError(
                    f"dataset file {path} has an unknown extension; use one of {', '.join(FILE_BUILDERS)}"
                )
            return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
        if path.is_dir():
            if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if spec.split not in ds:
                        raise CrosscoderUserError(f"dataset {path} has no split {spec.split!r}; it has {list(ds)}")
                    ds = ds[spec.split]
                return ds.to_iterable_dataset() if streaming else ds
            return datasets.load_dataset(str(path), split=spec.split, streaming=streaming)
        if _looks_like_path(spec.path):
            raise CrosscoderUserError(f"dataset path {spec.path} does not exist; fix dataset_path / datasets[].path")
        return datasets.load_dataset(spec.path, spec.name, split=spec.split, streaming=streaming)
    except CrosscoderUserError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError...)
        raise CrosscoderUserError(f"cannot open dataset {spec.path!r} (split {spec.split!r}): {_first_line(exc)}") from None


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix.lower() in FILE_BUILDERS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class RowFormat:
    kind: str  # "text" | "tokens" | "chat"
    column: str


def detect_format(spec: SourceSpec, row: dict[str, Any]) -> RowFormat:
    columns = list(row)

    def pick(explicit: str | None, candidates: tuple[str, ...], what: str) -> str | None:
        if explicit is not None:
            if explicit not in row:
                raise CrosscoderUserError(
                    f"dataset {spec.path} has no {what} column {explicit!r}; its columns are {columns}"
                )
            return explicit
        return next((c for c in candidates if c in row), None)

    if spec.is_tokenized or spec.tokens_column:
        column = pick(spec.tokens_column, TOKEN_COLUMNS, "token")
        if column is None:
            raise CrosscoderUserError(
                f"dataset {spec.path} is marked tokenized but has none of the columns {list(TOKEN_COLUMNS)} "
                f"(it has {columns}); set tokens_column"
            )
        return RowFormat("tokens", column)
    if spec.chat or spec.chat_column:
        column = pick(spec.chat_column, CHAT_COLUMNS, "chat")
        if column is None:
            raise CrosscoderUserError(
                f"dataset {spec.path} is marked chat but has none of the columns {list(CHAT_COLUMNS)} "
                f"(it has {columns}); set chat_column"
            )
        return RowFormat("chat", column)
    if spec.text_column:
        pick(spec.text_column, (), "text")
        return RowFormat("text", spec.text_column)
    if spec.is_tokenized is None:
        column = next((c for c in TOKEN_COLUMNS if c in row), None)
        if column is not None:
            return RowFormat("tokens", column)
    if spec.chat is None:
        column = next((c for c in CHAT_COLUMNS if c in row and isinstance(row[c], list)), None)
        if column is not None:
            return RowFormat("chat", column)
    column = next((c for c in TEXT_COLUMNS if c in row), None)
    if column is None:
        raise CrosscoderUserError(
            f"dataset {spec.path} has no text column (looked for {list(TEXT_COLUMNS)}; it has {columns}); "
            "set text_column (or chat_column / tokens_column) in its datasets entry"
        )
    return RowFormat("text", column)


# ---- documents -----------------------------------------------------------------------------
@dataclass
class Document:
    tokens: list[int]
    template: list[bool]  # True where the chat template (not a message) wrote the token


def tokenize_rows(
    rows: list[Any], fmt: RowFormat, tokenizer: PreTrainedTokenizerBase, source: str
) -> list[Document | None]:
    """Documents for a block of rows; None for a row the chat template rejects."""
    if fmt.kind == "tokens":
        out: list[Document | None] = []
        for row in rows:
            ids = [int(t) for t in row[fmt.column]]
            out.append(Document(ids, [False] * len(ids)))
        return out
    if fmt.kind == "text":
        texts = [str(row[fmt.column] or "") for row in rows]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [Document(list(ids), [False] * len(ids)) for ids in encoded]
    rendered: list[str | None] = [render_chat(row[fmt.column], tokenizer, source) for row in rows]
    ok = [r for r in rendered if r is not None]
    encoded = tokenizer(ok, add_special_tokens=False, return_offsets_mapping=True) if ok else {"input_ids": []}
    out, j = [], 0
    for row, text in zip(rows, rendered):
        if text is None:
            out.append(None)
            continue
        ids, offsets = encoded["input_ids"][j], encoded["offset_mapping"][j]
        j += 1
        spans = content_spans(text, row[fmt.column])
        out.append(Document(list(ids), [not _overlaps(o, spans) for o in offsets]))
    return out


def render_chat(messages: Any, tokenizer: PreTrainedTokenizerBase, source: str) -> str | None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise CrosscoderUserError(
            f"dataset {source} holds chat data but the tokenizer has no chat template; use an instruct "
            "model's tokenizer or mark the source chat: false with a text_column"
        )
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        return None
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # jinja raises for conversations the template refuses (system role, order)
        return None


def content_spans(text: str, messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Character spans of the message contents inside the rendered conversation."""
    spans, cursor = [], 0
    for message in messages:
        content = str(message.get("content") or "").strip()
        if not content:
            continue
        start = text.find(content, cursor)
        if start < 0:
            continue  # the template rewrote it; its tokens count as template
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    return spans


def _overlaps(offset: tuple[int, int] | list[int], spans: list[tuple[int, int]]) -> bool:
    lo, hi = offset
    return any(lo < s_hi and s_lo < hi for s_lo, s_hi in spans)


class DocumentSource:
    """Documents of one dataset, from a row position, looping over epochs."""

    def __init__(self, spec: SourceSpec, tokenizer: PreTrainedTokenizerBase) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.dataset = open_dataset(spec)
        self.epoch, self.row = 0, 0  # `row`: the row of the next document handed out
        self.n_skipped = 0
        self._documents_this_epoch = 0
        first = next(iter(self.dataset), None)
        if first is None:
            raise CrosscoderUserError(f"dataset {spec.path} (split {spec.split!r}) is empty")
        self.format = detect_format(spec, first)
        self._rows: Iterator[Any] | None = None
        self._ahead: list[tuple[int, Document | None]] = []  # (row, document) read but not handed out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "row": self.row}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.row = int(state["epoch"]), int(state["row"])
        self._rows, self._ahead = None, []

    def peek(self) -> Document:
        """The next non-empty document (rows the template rejects or that are empty are skipped)."""
        while True:
            if not self._ahead:
                self._read_block()
            row, doc = self._ahead[0]
            self.row = row
            if doc is not None and doc.tokens:
                self._documents_this_epoch += 1
                return doc
            if doc is None:
                self.n_skipped += 1
                if self.n_skipped in (1, 100, 10_000):
                    logger.warning("%s: skipped %d row(s) the chat template rejects", self.spec.path, self.n_skipped)
            self._ahead.pop(0)
            self.row = row + 1

    def advance(self) -> None:
        """Done with the document `peek` returned."""
        row, _ = self._ahead.pop(0)
        self.row = row + 1

    def _read_block(self) -> None:
        if self._rows is None:
            self._full_epoch = self.row == 0  # only a whole epoch can prove a dataset unusable
            self._documents_this_epoch = 0
            ds = self.dataset.skip(self.row) if self.row else self.dataset
            self._rows = iter(ds)
        rows = []
        for row in self._rows:
            rows.append(row)
            if len(rows) == TOKENIZE_BLOCK:
                break
        if not rows:
            if self._full_epoch and self._documents_this_epoch == 0:
                raise CrosscoderUserError(
                    f"dataset {self.spec.path} has no usable rows (all empty, or rejected by the chat template)"
                )
            self.epoch, self.row, self._rows = self.epoch + 1, 0, None
            logger.info("dataset %s: starting epoch %d", self.spec.path, self.epoch)
            self._read_block()
            return
        docs = tokenize_rows(rows, self.format, self.tokenizer, self.spec.path)
        first = self.row + len(self._ahead)
        self._ahead.extend((first + i, doc) for i, doc in enumerate(docs))


# ---- packing -------------------------------------------------------------------------------
class TokenStream:
    """Fixed-length context windows from a mix of sources, resumable at window boundaries."""

    def __init__(
        self,
        sources: list[DocumentSource],
        weights: list[float],
        context_size: int,
        bos_token_id: int | None,
        separator_token_id: int | None,
    ) -> None:
        self.sources, self.weights = sources, [float(w) for w in weights]
        self.context_size = context_size
        self.bos, self.separator = bos_token_id, separator_token_id
        self.sequence_index = 0  # windows produced so far
        self.source_tokens = [0] * len(sources)
        self.current: int | None = None  # source of the document in progress
        self.offset = 0  # tokens of that document already packed

    def state_dict(self) -> dict[str, Any]:
        return {
            "sequence_index": self.sequence_index,
            "sources": [s.state_dict() for s in self.sources],
            "source_tokens": list(self.source_tokens),
            "current": self.current,
            "offset": self.offset,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.sources):
            raise CrosscoderUserError(
                f"the saved data position has {len(state['sources'])} dataset(s) but the config has "
                f"{len(self.sources)}; resume with the config the run started with"
            )
        state = copy.deepcopy(state)
        self.sequence_index = int(state["sequence_index"])
        for source, s in zip(self.sources, state["sources"]):
            source.load_state_dict(s)
        self.source_tokens = [int(t) for t in state["source_tokens"]]
        self.current, self.offset = state["current"], int(state["offset"])

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next window: token ids ``[context_size]`` and template flags ``[context_size]``."""
        tokens: list[int] = []
        template: list[bool] = []
        while len(tokens) < self.context_size:
            if self.current is None:
                self.current = self._choose_source()
                self.offset = 0
                self.source_tokens[self.current] += len(self.sources[self.current].peek().tokens)
            doc = self.sources[self.current].peek()
            first = doc.tokens[self.offset]
            # same rules as SAELens's concat_and_batch_sequences: BOS opens every window,
            # the separator goes between documents, neither is doubled
            if not tokens:
                if self.bos is not None and first != self.bos:
                    tokens.append(self.bos)
                    template.append(False)
            elif self.offset == 0 and self.separator is not None and first != self.separator:
                tokens.append(self.separator)
                template.append(False)
            take = min(self.context_size - len(tokens), len(doc.tokens) - self.offset)
            tokens.extend(doc.tokens[self.offset : self.offset + take])
            template.extend(doc.template[self.offset : self.offset + take])
            self.offset += take
            if self.offset >= len(doc.tokens):
                self.sources[self.current].advance()
                self.current, self.offset = None, 0
        self.sequence_index += 1
        return torch.tensor(tokens, dtype=torch.long), torch.tensor(template, dtype=torch.bool)

    def _choose_source(self) -> int:
        if len(self.sources) == 1:
            return 0
        total = sum(self.source_tokens) or 1
        deficits = [self.source_tokens[i] / total - w for i, w in enumerate(self._shares())]
        return min(range(len(self.sources)), key=lambda i: (deficits[i], i))

    def _shares(self) -> list[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]


def build_token_stream(cfg: CrosscoderRunnerConfig, tokenizer: PreTrainedTokenizerBase) -> TokenStream:
    from sae_lens.pretokenize_runner import get_special_token_from_cfg

    specs = source_specs(cfg)
    sources = [DocumentSource(spec, tokenizer) for spec in specs]
    separator = cfg.sequence_separator_token
    try:
        separator_id = get_special_token_from_cfg(separator, tokenizer)
    except ValueError:
        raise CrosscoderUserError(
            f"sequence_separator_token={separator!r}: use 'bos', 'eos', 'sep', a token id, or null"
        ) from None
    return TokenStream(
        sources,
        [s.weight for s in specs],
        cfg.context_size,
        bos_token_id=tokenizer.bos_token_id if cfg.prepend_bos else None,
        separator_token_id=separator_id,
    )
