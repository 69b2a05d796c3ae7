"""Model and tokenizer loading offline, and the one-line errors for pairs that cannot be diffed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from sae_lens_crosscoder import cli
from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.loading import (
    check_tokenizers,
    load_model,
    load_models,
    load_tokenizer,
    stop_layer,
)


def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_local_gemma2_matches_hf_logits(tiny_gemma2_pair):
    model = load_model(str(tiny_gemma2_pair.base))
    hf = AutoModelForCausalLM.from_pretrained(tiny_gemma2_pair.base)
    # longer than the sliding window (16), so local and global layers both matter
    tokens = torch.randint(4, model.cfg.d_vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    assert model.cfg.original_architecture == "Gemma2ForCausalLM"
    assert "blocks.1.hook_resid_post" in model.hook_dict


def test_load_models_uses_dtype_devices_and_one_tokenizer(live_config):
    cfg = live_config(model_dtype="bfloat16", devices=["cpu", "cpu"])
    models = load_models(cfg)
    assert len(models) == 2
    assert all(next(m.parameters()).dtype == torch.bfloat16 for m in models)
    assert models[0].tokenizer.get_vocab() == models[1].tokenizer.get_vocab()
    # the stand-in fine-tune really differs from its base
    assert not torch.equal(models[0].W_E, models[1].W_E)


def test_stop_layer_runs_only_what_the_hook_needs(tiny_pair_models):
    model = tiny_pair_models[0][0]
    assert stop_layer(model, "blocks.0.hook_resid_post") == 1
    assert stop_layer(model, "blocks.1.mlp.hook_post") == 2
    assert stop_layer(model, "hook_embed") == 0
    assert stop_layer(model, "ln_final.hook_normalized") is None


def test_tokenizers_from_local_dirs_are_read_offline(tiny_gemma2_pair, tiny_gemma2_other_tokenizer):
    same = [load_tokenizer(n) for n in tiny_gemma2_pair.names]
    check_tokenizers(tiny_gemma2_pair.names, same)  # no error
    other = load_tokenizer(str(tiny_gemma2_other_tokenizer))
    with pytest.raises(CrosscoderUserError, match="tokenizer mismatch"):
        check_tokenizers([tiny_gemma2_pair.names[0], str(tiny_gemma2_other_tokenizer)], [same[0], other])


def test_missing_tokenizer_is_a_user_error(tmp_path):
    empty = tmp_path / "no_tokenizer"
    empty.mkdir()
    with pytest.raises(CrosscoderUserError, match="tokenizer"):
        load_tokenizer(str(empty))


def test_cli_tokenizer_mismatch_one_line(live_config, tiny_gemma2_pair, tiny_gemma2_other_tokenizer, tmp_path, capsys):
    names = [tiny_gemma2_pair.names[0], str(tiny_gemma2_other_tokenizer)]
    path = write_config(tmp_path / "cfg.yaml", live_config(model_names=names))
    code, err = run_cli(["train", str(path)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "tokenizer mismatch" in err and names[0] in err and names[1] in err


def test_cli_d_model_mismatch_one_line(live_config, tiny_gemma2_pair, tiny_gemma2_wide, tmp_path, capsys):
    names = [tiny_gemma2_pair.names[0], str(tiny_gemma2_wide)]
    path = write_config(tmp_path / "cfg.yaml", live_config(model_names=names))
    code, err = run_cli(["train", str(path)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "d_model mismatch" in err and "48" in err and "32" in err and names[1] in err


def test_cli_missing_hook_names_nearest_valid(live_config, tmp_path, capsys):
    path = write_config(tmp_path / "cfg.yaml", live_config(hook_name="blocks.1.hook_resid_pots"))
    code, err = run_cli(["train", str(path)], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no hook 'blocks.1.hook_resid_pots'" in err and "'blocks.1.hook_resid_post'" in err


def test_hook_past_the_last_layer_is_missing(live_config, tmp_path, capsys):
    path = write_config(tmp_path / "cfg.yaml", live_config(hook_name="blocks.5.hook_resid_post"))
    code, err = run_cli(["train", str(path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "(it has 2 layers, 0-1); the nearest valid name is 'blocks.1.hook_resid_post'" in err


def test_fine_tune_into_wrong_official_architecture_fails_before_weights(tiny_gemma2_pair):
    with pytest.raises(CrosscoderUserError, match="hidden_size is 32 but the architecture has d_model=3584"):
        load_model(str(tiny_gemma2_pair.finetune), architecture="google/gemma-2-9b-it")
    with pytest.raises(CrosscoderUserError, match="not a TransformerLens official name"):
        load_model(str(tiny_gemma2_pair.finetune), architecture="google/gemma-2-9b-itt")


def test_unknown_model_name_is_a_user_error(tiny_gemma2_pair):
    tokenizer = load_tokenizer(str(tiny_gemma2_pair.base))
    with pytest.raises(CrosscoderUserError, match="neither a TransformerLens official name nor a local directory"):
        load_model("someone/not-a-model", tokenizer=tokenizer)
