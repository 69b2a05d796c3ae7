"""Shared fixtures, all built offline and once per session.

- `tiny_tokenizer_dir`: a byte-level BPE tokenizer (vocab 400) with Gemma-style special
  tokens (<pad>=0, <eos>=1, <bos>=2, <unk>=3, <start_of_turn>, <end_of_turn>) and Gemma-2's
  chat template, saved to disk (TransformerLens needs the reloaded copy).
- `tiny_gemma2_pair`: two random Gemma-2-architecture HF checkpoints (2 layers, d_model 32)
  saved with that tokenizer; the second is the first with perturbed weights, a stand-in
  fine-tune. Plus `tiny_gemma2_wide` (d_model 48, for width mismatches) and
  `tiny_gemma2_other_tokenizer` (same dims, a different vocabulary).
- `text_jsonl`, `text_txt`, `text_parquet`, `chat_jsonl`, `pretokenized_jsonl`: small local
  datasets.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # The test models are tiny: with 2 threads every small matmul pays OpenMP sync costs,
    # and on a shared 2-core machine a busy neighbour makes them spin (measured: 16 store
    # batches took 2.0 s with 2 threads, 0.06 s with 1).
    torch.set_num_threads(1)

GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

_WORDS = (
    "the a cat dog bird fish tree house river city road car book song king queen child teacher "
    "runs jumps sings reads writes sees finds builds opens closes likes wants gives takes "
    "red blue green small big old new quick slow happy sad bright dark quiet loud "
    "in on under over near with from into after before and but so because while then"
).split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
    return " ".join(words).capitalize() + rng.choice([".", "!", "?"])


def document(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(1, 5)))


def conversation(rng: random.Random) -> list[dict[str, str]]:
    turns = []
    for t in range(2 * rng.randint(1, 2)):
        turns.append({"role": "user" if t % 2 == 0 else "assistant", "content": document(rng)})
    return turns


def build_tokenizer(out_dir: Path, vocab_size: int = 400, seed: int = 0):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    rng = random.Random(seed)
    texts = [document(rng) for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = GEMMA2_CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def build_gemma2(out_dir: Path, tokenizer_dir: Path, hidden: int = 32, seed: int = 0, perturb_from: Path | None = None,
                 n_layers: int = 2) -> Path:
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=256,
        sliding_window=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["Gemma2ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config)
    if perturb_from is not None:
        base = Gemma2ForCausalLM.from_pretrained(perturb_from)
        model.load_state_dict(base.state_dict())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class TinyPair:
    base: Path
    finetune: Path
    tokenizer_dir: Path

    @property
    def names(self) -> list[str]:
        return [str(self.base), str(self.finetune)]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_gemma2_pair(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> TinyPair:
    root = tmp_path_factory.mktemp("gemma2_pair")
    base = build_gemma2(root / "base", tiny_tokenizer_dir, seed=0)
    finetune = build_gemma2(root / "finetune", tiny_tokenizer_dir, seed=1, perturb_from=base)
    return TinyPair(base, finetune, tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_gemma2_wide(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    return build_gemma2(tmp_path_factory.mktemp("gemma2_wide") / "wide", tiny_tokenizer_dir, hidden=48, seed=2)


@pytest.fixture(scope="session")
def tiny_gemma2_other_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gemma2_other_tok")
    build_tokenizer(root / "tok", vocab_size=380, seed=5)
    return build_gemma2(root / "other", root / "tok", seed=3)


# ---- datasets ------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def text_jsonl(data_dir: Path) -> Path:
    rng = random.Random(10)
    return _write_jsonl(data_dir / "web.jsonl", [{"text": document(rng)} for _ in range(300)])


@pytest.fixture(scope="session")
def text_txt(data_dir: Path) -> Path:
    rng = random.Random(11)
    path = data_dir / "web.txt"
    path.write_text("\n".join(document(rng) for _ in range(100)) + "\n")
    return path


@pytest.fixture(scope="session")
def text_parquet(data_dir: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(12)
    path = data_dir / "web.parquet"
    pq.write_table(pa.table({"content": [document(rng) for _ in range(100)]}), path)
    return path


@pytest.fixture(scope="session")
def chat_jsonl(data_dir: Path) -> Path:
    rng = random.Random(13)
    return _write_jsonl(data_dir / "chat.jsonl", [{"messages": conversation(rng)} for _ in range(200)])


@pytest.fixture(scope="session")
def pretokenized_jsonl(data_dir: Path, tiny_tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    rng = random.Random(14)
    rows = []
    while len(rows) < 60:
        ids = tok(document(rng) + " " + document(rng), add_special_tokens=False)["input_ids"]
        if len(ids) >= 31:
            rows.append({"input_ids": [tok.bos_token_id, *ids[:31]]})
    return _write_jsonl(data_dir / "pretok.jsonl", rows)


# ---- configs and loaded models -------------------------------------------------------------
@pytest.fixture
def live_config(tiny_gemma2_pair: TinyPair, text_jsonl: Path, tmp_path: Path):
    """A factory of small live-training configs on the tiny pair (keyword overrides)."""
    from sae_lens_crosscoder.config import CrosscoderRunnerConfig

    def make(**overrides):
        values = dict(
            architecture="batchtopk_crosscoder",
            d_sae=64,
            k=4,
            model_names=tiny_gemma2_pair.names,
            hook_name="blocks.1.hook_resid_post",
            dataset_path=str(text_jsonl),
            context_size=32,
            store_batch_size_prompts=4,
            train_batch_size_tokens=64,
            training_tokens=64 * 40,
            cache_shuffle_buffer_tokens=256,
            cache_chunk_tokens=128,
            cache_shard_tokens=512,
            n_batches_for_norm_estimate=2,
            output_path=str(tmp_path / "run"),
            seed=7,
        )
        values.update(overrides)
        return CrosscoderRunnerConfig(**values)

    return make


@pytest.fixture(scope="session")
def tiny_pair_models(tiny_gemma2_pair: TinyPair):
    """The tiny pair loaded as HookedTransformers (shared: do not modify)."""
    from sae_lens_crosscoder.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_gemma2_pair.base))
    return [load_model(name, tokenizer=tokenizer) for name in tiny_gemma2_pair.names], tokenizer
