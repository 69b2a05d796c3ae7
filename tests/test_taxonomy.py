"""Taxonomies: the built-in capabilities-v1, registering, validation, lookup, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.labelling.taxonomy import (
    Category,
    Taxonomy,
    get_taxonomy,
    list_taxonomies,
    load_taxonomy,
    register_taxonomy,
)

STUDY_CATEGORIES = [
    "safety and content moderation", "multilingual / linguistic processing", "instruction following",
    "template following", "factual verification", "hallucination detection / management", "model self-reference",
    "query classification", "structured output generation", "code generation", "math", "other / unclear",
    "technical (code and math)",
]


def test_capabilities_v1_covers_the_study() -> None:
    tax = get_taxonomy("capabilities-v1")
    assert "capabilities-v1" in list_taxonomies()
    for title in STUDY_CATEGORIES:
        assert tax.resolve(title) is not None, title
    assert tax.other == "other" and tax.get("other").display == "other / unclear"
    assert tax.children("technical") == ["code_generation", "math"]
    assert tax.members("technical") == {"technical", "code_generation", "math"}
    assert all(c.description for c in tax.categories)
    # every category but the parent and the fallback has a lexicon for the rule labeller
    assert {c.name for c in tax.categories if c.lexicon is None} == {"technical", "other"}


def test_resolve_by_name_or_title() -> None:
    tax = get_taxonomy("capabilities-v1")
    assert tax.resolve("Instruction Following") == "instruction_following"
    assert tax.resolve("instruction-following") == "instruction_following"
    assert tax.resolve("Model self-reference") == "self_reference"
    assert tax.resolve("cooking") is None


def test_register_with_lexicons_and_lookup() -> None:
    tax = register_taxonomy(
        "organism-test",
        [
            Category("refusal", "refuses unsafe requests", keywords=["cannot help", "refus"]),
            Category("format", "numbered lists", patterns=[r"^\s*\d+\.\s"]),
            {"name": "other", "description": "nothing else"},
        ],
        description="for a test",
    )
    assert get_taxonomy("organism-test") is tax
    assert tax.get("refusal").lexicon.search("I REFUSED to") is not None
    assert tax.get("format").lexicon.search("intro\n2. second") is not None
    # identical re-registration is fine; a different one under the name needs overwrite
    assert register_taxonomy(Taxonomy.from_dict(tax.to_dict())) == tax
    changed = [Category("x", "x"), Category("other", "o")]
    with pytest.raises(CrosscoderUserError, match="already registered"):
        register_taxonomy("organism-test", changed)
    assert register_taxonomy("organism-test", changed, overwrite=True).names == ["x", "other"]


def test_keywords_match_at_word_starts() -> None:
    cat = Category("math", "m", keywords=["math"])
    assert cat.lexicon.search("Mathematics") and cat.lexicon.search("do the math!")
    assert not cat.lexicon.search("the aftermath")


def test_validation_errors() -> None:
    with pytest.raises(CrosscoderUserError, match="three levels"):
        Taxonomy("t", (Category("a", ""), Category("b", "", parent="a"), Category("c", "", parent="b"),
                       Category("other", "")))
    with pytest.raises(CrosscoderUserError, match="names parent 'tech'.*did you mean 'tec'"):
        Taxonomy("t", (Category("tec", ""), Category("code", "", parent="tech"), Category("other", "")))
    with pytest.raises(CrosscoderUserError, match="same name"):
        Taxonomy("t", (Category("Math", ""), Category("math", ""), Category("other", "")))
    with pytest.raises(CrosscoderUserError, match="no fallback category 'other'"):
        Taxonomy("t", (Category("a", ""),))
    with pytest.raises(CrosscoderUserError, match="not a valid regular expression"):
        Category("a", "", patterns=["(unclosed"])
    with pytest.raises(CrosscoderUserError, match="unknown key"):
        Category.from_dict({"name": "a", "keyword": ["x"]})


def test_unknown_name_suggests() -> None:
    with pytest.raises(CrosscoderUserError, match="unknown taxonomy 'capabilities-v2' .did you mean 'capabilities-v1'"):
        get_taxonomy("capabilities-v2")


def test_round_trip_and_file(tmp_path: Path) -> None:
    tax = get_taxonomy("capabilities-v1")
    back = Taxonomy.from_dict(tax.to_dict())
    assert back == tax and back.fingerprint() == tax.fingerprint()
    raw = {"name": "file-tax", "other": "misc",
           "categories": [{"name": "greeting", "description": "hello", "keywords": ["hello"]},
                          {"name": "misc", "description": "anything else"}]}
    path = tmp_path / "tax.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded = load_taxonomy(str(path))
    assert loaded.names == ["greeting", "misc"] and get_taxonomy("file-tax") == loaded
    with pytest.raises(CrosscoderUserError, match="does not exist"):
        load_taxonomy(str(tmp_path / "missing.yaml"))
    assert tax.fingerprint() != loaded.fingerprint()
