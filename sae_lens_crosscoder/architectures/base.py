"""What every crosscoder shares: the model axis, per-model scaling, decoder norms, shared latents.

Layout convention: SAELens sees a flat, model-major input ``[..., n_models * d_model]``
(model 0's dimensions first). The public API also accepts ``[..., n_models, d_model]`` and
returns the layout it was given.

Scaling convention: each model's activations are multiplied by its own factor
(``activation_scaling_factors[m]``, chosen so that model m's activations have mean norm
``sqrt(d_model)``) on the way in, and divided by it on the way out. Weights and biases
live in that normalised space and are never folded, so the per-model decoder norms, and
therefore the relative decoder norm, compare the models on an equal footing. The
crosscoder always takes and returns *raw* activations.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

import torch
from torch import nn
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from sae_lens_crosscoder.errors import CrosscoderUserError
from sae_lens_crosscoder.reconstruction import ReconstructionSums


@dataclass(kw_only=True)
class CrosscoderFields:
    """Fields shared by every crosscoder config, inference and training alike.

    n_models: models stacked along the model axis (>= 2); d_in must be n_models * d_model.
    n_shared_latents: latents 0..n_shared_latents-1 have decoder rows tied across models.
    shared_sparsity_coefficient: their sparsity cost relative to the others (L1 and JumpReLU
        penalties are multiplied by it; TopK rankings divide their score by it).
    """

    n_models: int = 2
    n_shared_latents: int = 0
    shared_sparsity_coefficient: float = 0.15

    def validate_crosscoder_fields(self: Any) -> None:
        if self.n_models < 2:
            raise CrosscoderUserError(
                f"n_models={self.n_models}: a crosscoder needs at least 2 models; use a plain SAELens SAE for one"
            )
        if self.d_in % self.n_models != 0:
            raise CrosscoderUserError(
                f"d_in={self.d_in} is not divisible by n_models={self.n_models}; d_in must be n_models * d_model"
            )
        if not 0 <= self.n_shared_latents <= self.d_sae:
            raise CrosscoderUserError(
                f"n_shared_latents={self.n_shared_latents} must be between 0 and d_sae={self.d_sae}"
            )
        if self.shared_sparsity_coefficient <= 0:
            raise CrosscoderUserError(
                "shared_sparsity_coefficient must be > 0 (it scales the shared latents' sparsity cost)"
            )
        if self.normalize_activations != "none":
            raise CrosscoderUserError(
                f"normalize_activations={self.normalize_activations!r} is not supported by crosscoders: "
                "they scale each model separately; leave normalize_activations at 'none'"
            )

    @property
    def d_model(self: Any) -> int:
        return self.d_in // self.n_models


class CrosscoderMixin:
    """Shared maths for crosscoder inference and training classes.

    Must come before the SAELens base class in the MRO.
    """

    cfg: Any
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    activation_scaling_factors: torch.Tensor
    dtype: torch.dtype
    device: torch.device

    # ---- shapes -------------------------------------------------------------------------
    @property
    def n_models(self) -> int:
        return self.cfg.n_models

    @property
    def d_model(self) -> int:
        return self.cfg.d_in // self.cfg.n_models

    def flatten_models(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n_models, d_model] -> [..., n_models * d_model]; flat input passes through."""
        if x.shape[-1] == self.cfg.d_in:
            return x
        if x.ndim >= 2 and tuple(x.shape[-2:]) == (self.n_models, self.d_model):
            return x.flatten(-2)
        raise CrosscoderUserError(
            f"activations of shape {tuple(x.shape)} do not fit this crosscoder: expected "
            f"[..., {self.n_models}, {self.d_model}] or [..., {self.cfg.d_in}]"
        )

    def unflatten_models(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n_models, self.d_model))

    # ---- weights ------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """Decoder rows start identical across models with per-model norm `decoder_init_norm`
        (0.1 unless set), so every latent starts shared (relative norm 0.5, cosine 1);
        the encoder starts as the decoder's transpose."""
        cfg = self.cfg
        d_sae, n_models, d_model = cfg.d_sae, cfg.n_models, cfg.d_in // cfg.n_models
        init_norm = getattr(cfg, "decoder_init_norm", None) or 0.1
        direction = torch.empty(d_sae, d_model, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(direction)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        w_dec = (direction * init_norm).repeat(1, n_models)
        self.W_dec = nn.Parameter(w_dec.contiguous())
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=self.dtype, device=self.device))
        self.register_buffer(  # type: ignore[attr-defined]
            "activation_scaling_factors",
            torch.ones(n_models, dtype=torch.float32, device=self.device),
        )

    @property
    def latent_sparsity_weights(self) -> torch.Tensor:
        """c_j: shared_sparsity_coefficient for shared latents, 1 for the others. Built on
        demand rather than stored, so loading through the meta device cannot strand it."""
        weights = torch.ones(self.cfg.d_sae, dtype=torch.float32, device=self.W_dec.device)
        weights[: self.cfg.n_shared_latents] = self.cfg.shared_sparsity_coefficient
        return weights

    def decoder(self) -> torch.Tensor:
        """The decoder matrix used in the forward pass ([d_sae, d_in])."""
        return self.W_dec

    def decoder_norms(self, W_dec: torch.Tensor | None = None) -> torch.Tensor:
        """Per-model decoder norms ||d_j^m||, shape [d_sae, n_models]."""
        W = self.W_dec if W_dec is None else W_dec
        return W.unflatten(-1, (self.n_models, self.d_model)).norm(dim=-1)

    @torch.no_grad()
    def get_W_dec_norm(self) -> torch.Tensor:
        """Sum over models of the decoder norms (the crosscoder convention), not the norm of
        the concatenated row. SAELens's fold_W_dec_norm uses this, so folding leaves
        sum_m ||d_j^m|| = 1 and keeps the relative norms."""
        return self.decoder_norms().sum(-1).clamp(min=1e-8)

    @torch.no_grad()
    def relative_decoder_norms(self, first: int = 0, second: int = 1) -> torch.Tensor:
        """Delta-norm in [0, 1]: 0 = only `first` model, 1 = only `second`, 0.5 = equal."""
        norms = self.decoder_norms()
        a, b = norms[:, first], norms[:, second]
        return 0.5 * ((b - a) / torch.maximum(a, b).clamp(min=1e-12) + 1.0)

    @torch.no_grad()
    def decoder_cosine(self, first: int = 0, second: int = 1) -> torch.Tensor:
        W = self.W_dec.unflatten(-1, (self.n_models, self.d_model))
        return torch.nn.functional.cosine_similarity(W[:, first], W[:, second], dim=-1)

    # ---- per-model scaling --------------------------------------------------------------
    def _flat_scale(self, like: torch.Tensor) -> torch.Tensor:
        return self.activation_scaling_factors.to(like.dtype).repeat_interleave(self.d_model)

    def _setup_activation_normalization(self) -> None:
        self.run_time_activation_norm_fn_in = lambda x: x * self._flat_scale(x)
        self.run_time_activation_norm_fn_out = lambda x: x / self._flat_scale(x)

    @torch.no_grad()
    def set_activation_scaling_factors(self, factors: torch.Tensor | list[float]) -> None:
        factors = torch.as_tensor(factors, dtype=torch.float32)
        if factors.shape != (self.n_models,) or not torch.isfinite(factors).all() or (factors <= 0).any():
            raise CrosscoderUserError(
                f"activation scaling factors must be {self.n_models} finite positive numbers, got {factors.tolist()}"
            )
        self.activation_scaling_factors.copy_(factors.to(self.activation_scaling_factors.device))

    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        raise CrosscoderUserError(
            "crosscoders keep per-model scaling factors instead of folding one scalar; "
            "leave normalize_activations at 'none' (per-model scaling is on by default)"
        )

    # ---- forward ------------------------------------------------------------------------
    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        return super().process_sae_in(self.flatten_models(sae_in))  # type: ignore[misc]

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        return self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)  # type: ignore[attr-defined]

    def ranking_scores(self, acts: torch.Tensor, W_dec: torch.Tensor | None = None) -> torch.Tensor:
        """s_j = f_j * sum_m ||d_j^m|| / c_j, what TopK variants rank latents by."""
        norms = self.decoder_norms(W_dec).sum(-1)
        return acts * (norms / self.latent_sparsity_weights.to(norms.dtype)).to(acts.dtype)

    def decode_normalized(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.decoder().to(feature_acts.dtype) + self.b_dec.to(feature_acts.dtype)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(self.decode_normalized(feature_acts))  # type: ignore[attr-defined]
        return self.run_time_activation_norm_fn_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = x.shape[-1] != self.cfg.d_in
        out = super().forward(self.flatten_models(x))  # type: ignore[misc]
        return self.unflatten_models(out) if stacked else out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations in, per-model reconstructions out: [..., n_models, d_model]."""
        return self.unflatten_models(self.decode(self.encode(x)))  # type: ignore[attr-defined]

    def get_name(self) -> str:
        names = self.cfg.metadata.get("model_names") or [f"model{m}" for m in range(self.n_models)]
        name = f"crosscoder_{'_vs_'.join(_short_model_name(str(n)) for n in names)}_{self.cfg.d_sae}"
        # SAELens logs checkpoints to W&B as artifacts of this name (with "/" as "__"),
        # which allow [A-Za-z0-9._-] and at most 128 characters
        name = re.sub(r"[^A-Za-z0-9._/-]", "_", name)
        if len(name.replace("/", "__")) > 120:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = name.replace("/", "__")[:111] + "_" + digest
        return name

    @torch.no_grad()
    def log_histograms(self) -> dict[str, Any]:
        hists = {"weights/W_dec_norms": self.get_W_dec_norm().float().cpu().numpy()}
        for m in range(1, self.n_models):
            hists[f"weights/relative_decoder_norm_0_{m}"] = (
                self.relative_decoder_norms(0, m).float().cpu().numpy()
            )
        return hists

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        expected = {
            "W_dec": (self.cfg.d_sae, self.cfg.d_in),
            "W_enc": (self.cfg.d_in, self.cfg.d_sae),
        }
        for key, shape in expected.items():
            if key in state_dict and tuple(state_dict[key].shape) != shape:
                raise CrosscoderUserError(
                    f"checkpoint tensor {key} has shape {tuple(state_dict[key].shape)} but the config "
                    f"says {shape}; the weights and cfg.json come from different crosscoders"
                )
        if "activation_scaling_factors" not in state_dict:
            state_dict["activation_scaling_factors"] = torch.ones(self.cfg.n_models)


class CrosscoderTrainingMixin(CrosscoderMixin):
    """Training behaviour shared by every crosscoder: losses in the normalised space,
    shared-latent tying, per-model metrics."""

    def decoder(self) -> torch.Tensor:
        """Shared rows are replaced by their mean over models. Every copy then receives the
        same gradient, so copies that start equal stay equal under Adam and clipping."""
        S = self.cfg.n_shared_latents
        if S == 0:
            return self.W_dec
        shared = self.W_dec[:S].unflatten(-1, (self.n_models, self.d_model)).mean(dim=1)
        return torch.cat([shared.repeat(1, self.n_models), self.W_dec[S:]], dim=0)

    @torch.no_grad()
    def tie_shared_latents(self) -> None:
        """Make shared decoder rows exactly equal across models (their mean)."""
        S = self.cfg.n_shared_latents
        if S:
            self.W_dec.data[:S] = self.decoder()[:S].detach()

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = self.flatten_models(step_input.sae_in)
        feature_acts, hidden_pre = self.encode_with_hidden_pre(x)  # type: ignore[attr-defined]
        x_norm = self.run_time_activation_norm_fn_in(x.to(self.dtype))
        recon = self.decode_normalized(feature_acts)
        mse_loss = (recon - x_norm).pow(2).sum(-1).mean()

        normalized_input = replace(step_input, sae_in=x_norm)
        aux = self.calculate_aux_loss(  # type: ignore[attr-defined]
            step_input=normalized_input, feature_acts=feature_acts, hidden_pre=hidden_pre, sae_out=recon
        )
        losses = {"mse_loss": mse_loss, **aux}
        loss = sum(losses.values(), torch.zeros((), device=mse_loss.device, dtype=mse_loss.dtype))
        metrics: dict[str, Any] = {}
        if step_input.is_logging_step:
            metrics = per_model_metrics(x_norm.detach(), recon.detach(), self.n_models)
            if step_input.dead_neuron_mask is not None:
                metrics["dead_fraction"] = step_input.dead_neuron_mask.float().mean().item()
        return TrainStepOutput(
            sae_in=x_norm,
            sae_out=recon,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=loss,
            losses=losses,
            metrics=metrics,
        )

    def save_inference_model(self, path: Any) -> Any:
        self.tie_shared_latents()
        return super().save_inference_model(path)  # type: ignore[misc]


@torch.no_grad()
def per_model_metrics(x: torch.Tensor, recon: torch.Tensor, n_models: int) -> dict[str, float]:
    """MSE (summed over d_model, mean over tokens) and fraction of variance explained,
    per model, from flat [B, n_models*d_model] tensors."""
    sums = ReconstructionSums(n_models)
    sums.update(x, recon)
    return sums.by_model_index()


def _short_model_name(name: str) -> str:
    # a local checkpoint is named by its folder, not its whole path
    return PurePath(name).name if name.startswith(("/", ".", "~")) else name
