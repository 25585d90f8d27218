"""DDMPipeline: the assembled Decentralized Diffusion Model as a diffusers DiffusionPipeline.

K experts + a router + VAE + text encoder (+ tokenizer) + FlowMatchEulerDiscreteScheduler,
saved in the layout of DESIGN.md §1. At every Euler step the router re-routes each sample,
a strategy picks experts and weights, only the selected experts run (batched per expert,
classifier-free guidance per expert before combining) and flow.combine mixes their
velocities. Inference only: nothing here trains or touches the store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.utils.outputs import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from atoll.errors import AtollError
from atoll.trainer import flow
from atoll.trainer.encoders import HashedBowTextEncoder, LatentCodec, TextEncoder, load_text_encoder, load_vae
from atoll.trainer.models.expert import velocity
from atoll.trainer.models.router import router_logits
from atoll.trainer.strategies import Strategy, expert_usage, parse_strategy

MARKER = "assembled.json"
"""Written last by save_pretrained: a model directory without it is incomplete."""
_EXPERT = re.compile(r"^expert_(\d+)$")
_LIBRARIES = ("diffusers", "transformers")


class ModelDirError(AtollError):
    """A model directory that is missing, incomplete or not a DDM."""


@dataclass
class DDMPipelineOutput(BaseOutput):
    """Samples of a DDMPipeline call."""

    images: list[PIL.Image.Image] | torch.Tensor
    """PIL images (output_type "pil"), or a tensor [B, 3, R, R] in [0, 1] ("pt")."""
    latents: torch.Tensor | None = None
    """Final latents [B, C, H, W] (with return_latents=True)."""
    usage: list[dict[str, Any]] | None = None
    """Per step: σ, per-expert share of samples run and mean weight (with return_usage=True)."""


@dataclass(frozen=True)
class _Captions:
    """Caption embeddings of one call and the empty caption for guidance, per sample."""

    text: torch.Tensor
    mask: torch.Tensor
    null_text: torch.Tensor
    null_mask: torch.Tensor


# diffusers' pipeline machinery is untyped and sets components dynamically: subclass it as Any.
_DiffusionPipeline: Any = DiffusionPipeline


class DDMPipeline(_DiffusionPipeline):  # type: ignore[misc]
    """Samples images from K independently trained experts combined by a router."""

    model_cpu_offload_seq = None
    # A one-expert model (the monolith baseline) has no router; hashed-bow has no tokenizer.
    _optional_components = ["router", "tokenizer"]  # noqa: RUF012 (diffusers declares it as a class list)
    # Components, set by register_modules (declared for the type checker).
    router: torch.nn.Module | None
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Any
    scheduler: Any

    def __init__(
        self,
        *,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        scheduler: Any,
        router: torch.nn.Module | None = None,
        tokenizer: Any = None,
        experts: Sequence[torch.nn.Module] = (),
        default_strategy: str = "top-2",
        default_steps: int = 50,
        default_guidance: float = 3.0,
    ) -> None:
        super().__init__()
        if not experts:
            raise ModelDirError("a DDMPipeline needs at least one expert")
        parse_strategy(default_strategy)
        if len(experts) > 1:
            if router is None:
                raise ModelDirError(f"a DDMPipeline of {len(experts)} experts needs a router")
            clusters = int(getattr(router.config, "num_clusters", -1))
            if clusters != len(experts):
                raise ModelDirError(f"the router classifies {clusters} clusters but there are {len(experts)} experts")
        # Plain attribute (not config): the expert count decides which components exist.
        self.num_experts = len(experts)
        self.register_modules(
            router=router, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_modules(**{f"expert_{k}": expert for k, expert in enumerate(experts)})
        self.register_to_config(
            default_strategy=default_strategy, default_steps=default_steps, default_guidance=default_guidance
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)

    # -- components --------------------------------------------------------------------

    @classmethod
    def _get_signature_keys(cls, obj: Any) -> tuple[list[str], list[str]]:
        """diffusers' module list, with `experts` expanded into expert_0 … expert_{K-1}."""
        expected, optional = super()._get_signature_keys(obj)
        count = 0 if isinstance(obj, type) else int(getattr(obj, "num_experts", 0))
        modules = sorted({*expected, *(f"expert_{k}" for k in range(count))})
        return modules, [name for name in optional if name != "experts"]

    @property
    def experts(self) -> list[torch.nn.Module]:
        """expert_0 … expert_{K-1}."""
        return [getattr(self, f"expert_{k}") for k in range(self.num_experts)]

    def codec(self) -> LatentCodec:
        """The VAE with its scaling applied."""
        return LatentCodec("vae", self.vae)

    def text(self) -> TextEncoder:
        """The caption encoder with its tokenizer."""
        name = "hashed-bow" if isinstance(self.text_encoder, HashedBowTextEncoder) else "clip-vitl14"
        return TextEncoder(name, self.text_encoder, self.tokenizer)

    # -- saving and loading ------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' save_pretrained, then the completion marker (assembled.json) last."""
        directory = Path(save_directory)
        (directory / MARKER).unlink(missing_ok=True)
        super().save_pretrained(str(directory), **kwargs)
        files = {
            path.relative_to(directory).as_posix(): path.stat().st_size
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != MARKER
        }
        marker = {"experts": self.num_experts, "files": files}
        (directory / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        device: torch.device | str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DDMPipeline:
        """Load a model directory written by the assemble stage (or save_pretrained); local only."""
        if kwargs:
            raise TypeError(f"DDMPipeline.from_pretrained got unsupported arguments: {sorted(kwargs)}")
        directory = Path(pretrained_model_name_or_path)
        index = check_model_dir(directory)
        experts = [_load_component(directory, f"expert_{k}", index[f"expert_{k}"]) for k in range(_expert_count(index))]
        text = load_text_encoder(
            directory / "text_encoder", directory / "tokenizer" if (directory / "tokenizer").is_dir() else None
        )
        pipeline = cls(
            router=_load_component(directory, "router", index["router"]) if _has(index, "router") else None,
            vae=load_vae(directory / "vae").model,
            text_encoder=text.model,
            tokenizer=text.tokenizer,
            scheduler=_scheduler_class().from_pretrained(str(directory / "scheduler")),
            experts=experts,
            default_strategy=index.get("default_strategy", "top-2"),
            default_steps=int(index.get("default_steps", 50)),
            default_guidance=float(index.get("default_guidance", 3.0)),
        )
        pipeline.register_to_config(_name_or_path=str(directory))
        if device is not None or torch_dtype is not None:
            pipeline.to(device=device, dtype=torch_dtype)
        return pipeline

    # -- sampling ----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        *,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        strategy: str | Strategy | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_latents: bool = False,
        return_usage: bool = False,
    ) -> DDMPipelineOutput:
        """Sample images for `prompt` (one or many), deterministic for an int or seeded generator.

        Instead of prompts, pre-encoded captions may be given (prompt_embeds [n, L, D] with
        prompt_attention_mask [n, L]), e.g. the text embeddings stored with the real data.

        strategy: top-1, top-2, top-k:N, threshold:p or full (default: the model's; a
        one-expert model has no router and ignores it). guidance
        1 turns classifier-free guidance off; otherwise each selected expert runs on the
        caption and the empty caption and is guided before the experts are combined.
        """
        chosen = (
            strategy if isinstance(strategy, Strategy) else parse_strategy(strategy or self.config.default_strategy)
        )
        if self.num_experts > 1:
            chosen.check_experts(self.num_experts)
        steps = int(num_inference_steps or self.config.default_steps)
        guidance = float(self.config.default_guidance if guidance_scale is None else guidance_scale)
        if steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        device, dtype = self.device, self.dtype
        captions = self._captions(prompt, prompt_embeds, prompt_attention_mask, num_images_per_prompt)
        if isinstance(generator, int):
            generator = torch.Generator(device="cpu").manual_seed(generator)
        shape = (captions.text.shape[0], *self.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        x = latents.to(device, dtype)

        self.scheduler.set_timesteps(steps, device=device)
        usage: list[dict[str, Any]] = []
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            sigma = self.scheduler.sigmas[i].to(device, dtype).expand(x.shape[0])
            weights = self._route(chosen, x, sigma, captions)
            velocities = self._expert_velocities(x, sigma, weights, captions, guidance)
            v = flow.combine(velocities, weights.to(dtype))
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if return_usage:
                usage.append({"sigma": float(sigma[0]), **expert_usage(weights)})

        images = self.codec().decode(x).clamp(-1, 1)
        output: list[PIL.Image.Image] | torch.Tensor
        if output_type == "pil":
            output = self.image_processor.postprocess(images, output_type="pil")
        elif output_type == "pt":
            output = (images + 1) / 2
        else:
            raise ValueError(f"output_type must be pil or pt, got {output_type!r}")
        return DDMPipelineOutput(
            images=output, latents=x if return_latents else None, usage=usage if return_usage else None
        )

    def _captions(
        self,
        prompt: str | Sequence[str] | None,
        prompt_embeds: torch.Tensor | None,
        prompt_attention_mask: torch.Tensor | None,
        repeats: int,
    ) -> _Captions:
        """The conditioning captions (each repeated `repeats` times) and the empty caption beside them."""
        encoder = self.text()
        if prompt_embeds is not None:
            if prompt is not None or prompt_attention_mask is None:
                raise ValueError("give either prompt, or prompt_embeds with prompt_attention_mask")
            text, mask = prompt_embeds.float(), prompt_attention_mask.bool()
        elif prompt is not None:
            text, mask = encoder.encode_prompts([prompt] if isinstance(prompt, str) else list(prompt))
        else:
            raise ValueError("give a prompt (or prompt_embeds)")
        device, dtype = self.device, self.dtype
        text = text.repeat_interleave(repeats, dim=0).to(device, dtype)
        mask = mask.repeat_interleave(repeats, dim=0).to(device)
        null_text, null_mask = encoder.encode_prompts([""])
        return _Captions(
            text=text,
            mask=mask,
            null_text=null_text.to(device, dtype).expand_as(text),
            null_mask=null_mask.to(device).expand_as(mask),
        )

    def _route(self, strategy: Strategy, x: torch.Tensor, sigma: torch.Tensor, captions: _Captions) -> torch.Tensor:
        """Combination weights [B, K] for this step; a single expert (no router) always has weight 1."""
        if self.num_experts == 1:
            return torch.ones(x.shape[0], 1, device=x.device)
        assert self.router is not None  # checked in __init__ for K > 1
        logits = router_logits(self.router, x, sigma, captions.text, captions.mask)
        return strategy.weights(torch.softmax(logits.float(), dim=1))

    def _expert_velocities(
        self, x: torch.Tensor, sigma: torch.Tensor, weights: torch.Tensor, captions: _Captions, guidance: float
    ) -> list[torch.Tensor | None]:
        """Each selected expert's guided velocity on the samples routed to it (None if unused)."""
        velocities: list[torch.Tensor | None] = []
        for k, expert in enumerate(self.experts):
            rows = torch.nonzero(weights[:, k] > 0).flatten()
            if rows.numel() == 0:
                velocities.append(None)
                continue
            xk, sk = x[rows], sigma[rows]
            if guidance == 1.0:
                vk = velocity(expert, xk, sk, captions.text[rows], captions.mask[rows])
            else:
                both = velocity(
                    expert,
                    torch.cat([xk, xk]),
                    torch.cat([sk, sk]),
                    torch.cat([captions.null_text[rows], captions.text[rows]]),
                    torch.cat([captions.null_mask[rows], captions.mask[rows]]),
                )
                unconditional, conditional = both.chunk(2)
                vk = unconditional + guidance * (conditional - unconditional)
            full = torch.zeros_like(x)
            full[rows] = vk.to(x.dtype)
            velocities.append(full)
        return velocities

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """[C, H, W] the experts denoise."""
        config: Any = self.experts[0].config
        return int(config.in_channels), int(config.sample_size), int(config.sample_size)


def check_model_dir(directory: Path) -> dict[str, Any]:
    """model_index.json of a complete model directory, or a ModelDirError saying what is wrong."""
    if not directory.is_dir():
        raise ModelDirError(f"{directory} is not a model directory (expected a run's model/ folder)")
    marker_path = directory / MARKER
    if not marker_path.is_file():
        raise ModelDirError(
            f"{directory} is incomplete: {MARKER} is missing (the assemble stage has not finished; run it again)"
        )
    marker = json.loads(marker_path.read_text())
    for name, size in marker.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            raise ModelDirError(f"{directory} is damaged: {name} is missing or has the wrong size")
    index: dict[str, Any] = json.loads((directory / "model_index.json").read_text())
    if index.get("_class_name") != DDMPipeline.__name__:
        raise ModelDirError(f"{directory} holds a {index.get('_class_name')}, not a DDMPipeline")
    if _expert_count(index) != marker.get("experts"):
        raise ModelDirError(f"{directory}: model_index.json and {MARKER} disagree on the number of experts")
    return index


def _scheduler_class() -> Any:
    return FlowMatchEulerDiscreteScheduler


def flow_match_scheduler() -> Any:
    """The scheduler of the shared forward process: x_t = (1 − σ)·x0 + σ·ε, timestep 1000·σ, no shift."""
    return _scheduler_class()(num_train_timesteps=int(flow.TIMESTEP_SCALE), shift=1.0)


def _has(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] is not None


def _expert_count(index: dict[str, Any]) -> int:
    numbers = sorted(int(m.group(1)) for key in index if (m := _EXPERT.match(key)))
    if numbers != list(range(len(numbers))) or not numbers:
        raise ModelDirError(f"model_index.json must list expert_0 … expert_{{K-1}}, found experts {numbers}")
    return len(numbers)


def _load_component(directory: Path, name: str, entry: Any) -> torch.nn.Module:
    """Load one model component through its class's from_pretrained (local files only)."""
    import importlib

    if not isinstance(entry, list | tuple) or len(entry) != 2 or entry[0] is None:
        raise ModelDirError(f"{directory}/model_index.json: component {name} is not recorded as [library, class]")
    library, class_name = str(entry[0]), str(entry[1])
    if library not in _LIBRARIES and not library.startswith("atoll."):
        raise ModelDirError(f"{directory}: component {name} comes from {library}, which DDMPipeline does not load")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelDirError(f"{directory}: component {name}: {library} has no class {class_name}")
    # low_cpu_mem_usage=False: the fast path needs `accelerate`, which is not a dependency.
    model: torch.nn.Module = cls.from_pretrained(str(directory / name), local_files_only=True, low_cpu_mem_usage=False)
    return model.eval()
