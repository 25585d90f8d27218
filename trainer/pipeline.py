"""DDMPipeline: the assembled Decentralized Diffusion Model as a diffusers DiffusionPipeline.

K experts + a router + VAE + text encoder (+ tokenizer) + FlowMatchEulerDiscreteScheduler,
saved in the layout of DESIGN.md §1. At every Euler step the router re-routes each sample
(each whole clip, for video: one distribution per clip, never per frame), a strategy picks
experts and weights, only the selected experts run (batched per expert, classifier-free
guidance per expert before combining) and flow.combine mixes their velocities. A video
model can start from a given first frame (image-to-video). Inference only: nothing here
trains or touches the store.

Slightly over 400 lines on purpose: it is one DiffusionPipeline class, and diffusers' own
pipelines keep `__call__` and the helpers of its denoising loop in one file, which is where
a reader who knows diffusers looks for them.
"""

from __future__ import annotations

import inspect
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
from diffusers.video_processor import VideoProcessor

from atoll.trainer import flow
from atoll.trainer.data.base import pil_to_tensor
from atoll.trainer.encoders import HashedBowTextEncoder, LatentCodec, TextEncoder, load_text_encoder, load_vae
from atoll.trainer.modeldir import (
    MARKER,
    ModelDirError,
    check_model_dir,
    expert_count,
    finish_model_dir,
    has_component,
    load_component,
)
from atoll.trainer.models.expert import velocity
from atoll.trainer.models.router import router_logits
from atoll.trainer.strategies import Strategy, expert_usage, parse_strategy

__all__ = ["MARKER", "DDMPipeline", "DDMPipelineOutput", "ModelDirError", "check_model_dir", "ddm_pipeline_class"]


@dataclass
class DDMPipelineOutput(BaseOutput):
    """Samples of a DDMPipeline call: `images` for an image model, `frames` for a video model."""

    images: list[PIL.Image.Image] | torch.Tensor | None = None
    """PIL images (output_type "pil"), or a tensor [B, 3, R, R] in [0, 1] ("pt")."""
    frames: list[list[PIL.Image.Image]] | torch.Tensor | Any = None
    """Video (diffusers' video output): a list of B lists of F PIL frames ("pil"), an array
    [B, F, H, W, 3] in [0, 1] ("np") or a tensor [B, F, 3, H, W] in [0, 1] ("pt")."""
    latents: torch.Tensor | None = None
    """Final latents [B, C, H, W] or [B, C, T, H, W] (with return_latents=True)."""
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
        latent_shape: Sequence[int] | None = None,
        first_frame_conditioning: bool = False,
        fps: float | None = None,
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
            default_strategy=default_strategy,
            default_steps=default_steps,
            default_guidance=default_guidance,
            latent_shape=None if latent_shape is None else [int(v) for v in latent_shape],
            first_frame_conditioning=bool(first_frame_conditioning),
            fps=fps,
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)
        self.video_processor = VideoProcessor(vae_scale_factor=1, do_normalize=True)

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
        """diffusers' save_pretrained, then pipeline_ddm.py (diffusers' entry point) and the
        completion marker (assembled.json) last."""
        directory = Path(save_directory)
        (directory / MARKER).unlink(missing_ok=True)
        super().save_pretrained(str(directory), **kwargs)
        finish_model_dir(directory, self.num_experts)

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
        experts = [load_component(directory, f"expert_{k}", index[f"expert_{k}"]) for k in range(expert_count(index))]
        text = load_text_encoder(
            directory / "text_encoder", directory / "tokenizer" if (directory / "tokenizer").is_dir() else None
        )
        pipeline = cls(
            router=load_component(directory, "router", index["router"]) if has_component(index, "router") else None,
            vae=load_vae(directory / "vae").model,
            text_encoder=text.model,
            tokenizer=text.tokenizer,
            scheduler=_scheduler_class().from_pretrained(str(directory / "scheduler")),
            experts=experts,
            default_strategy=index.get("default_strategy", "top-2"),
            default_steps=int(index.get("default_steps", 50)),
            default_guidance=float(index.get("default_guidance", 3.0)),
            latent_shape=index.get("latent_shape"),
            first_frame_conditioning=bool(index.get("first_frame_conditioning", False)),
            fps=index.get("fps"),
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
        image: PIL.Image.Image | torch.Tensor | None = None,
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
        """Sample images (or clips) for `prompt` (one or many), deterministic for an int or seeded generator.

        Instead of prompts, pre-encoded captions may be given (prompt_embeds [n, L, D] with
        prompt_attention_mask [n, L]), e.g. the text embeddings stored with the real data.

        image (video models trained with expert.firstFrameConditioning): the first frame of
        every clip, a PIL image or images [3, R, R] / [n, 3, R, R] in [-1, 1]; the clips
        start from it (image-to-video) and keep it exactly.

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
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")
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
        first = None if image is None else self._first_frame_latent(image, shape[0]).to(device, dtype)
        given = None if first is None else torch.ones(shape[0], dtype=torch.bool, device=device)

        self.scheduler.set_timesteps(steps, device=device)
        usage: list[dict[str, Any]] = []
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if first is not None:
                x[:, :, 0] = first
            sigma = self.scheduler.sigmas[i].to(device, dtype).expand(x.shape[0])
            weights = self._route(chosen, x, sigma, captions)
            velocities = self._expert_velocities(x, sigma, weights, captions, guidance, given=given)
            v = flow.combine(velocities, weights.to(dtype))
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
            if return_usage:
                usage.append({"sigma": float(sigma[0]), **expert_usage(weights)})
        if first is not None:
            x[:, :, 0] = first

        output = self._decoded(x, output_type)
        output.latents = x if return_latents else None
        output.usage = usage if return_usage else None
        return output

    def _decoded(self, latents: torch.Tensor, output_type: str) -> DDMPipelineOutput:
        """Decode final latents into diffusers' image or video output conventions."""
        samples = self.codec().decode(latents).clamp(-1, 1)
        if self.is_video:
            if output_type == "pt":
                return DDMPipelineOutput(frames=((samples + 1) / 2).transpose(1, 2))
            return DDMPipelineOutput(frames=self.video_processor.postprocess_video(samples, output_type=output_type))
        if output_type == "pt":
            return DDMPipelineOutput(images=(samples + 1) / 2)
        return DDMPipelineOutput(images=self.image_processor.postprocess(samples, output_type=output_type))

    @property
    def is_video(self) -> bool:
        """Whether this model samples clips [C, T, H, W] rather than images."""
        return len(self.latent_shape) == 4

    def _first_frame_latent(self, image: PIL.Image.Image | torch.Tensor, batch: int) -> torch.Tensor:
        """The clean first latent frame [B, C, H, W] of the clips from a given first frame (image-to-video)."""
        if not self.is_video:
            raise ValueError("image= gives the first frame of a clip: this model samples images")
        if not self.config.first_frame_conditioning:
            raise ValueError(
                "this video model was not trained to start from a given first frame"
                " (train it with expert.firstFrameConditioning > 0)"
            )
        side = self.codec().decoded_side(self.latent_shape)
        if isinstance(image, PIL.Image.Image):
            frames = pil_to_tensor(image, side).unsqueeze(0)
        else:
            frames = image.unsqueeze(0) if image.ndim == 3 else image
            if tuple(frames.shape[1:]) != (3, side, side):
                raise ValueError(
                    f"image must be [3, {side}, {side}] or [n, 3, {side}, {side}], got {tuple(image.shape)}"
                )
        if frames.shape[0] not in (1, batch):
            raise ValueError(f"{frames.shape[0]} first frames for {batch} clips")
        # A clip of one frame: a causal video VAE (Wan) encodes the first frame on its own.
        latent = self.codec().encode(frames.float().unsqueeze(2))[:, :, 0]
        return latent.expand(batch, *latent.shape[1:])

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
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        weights: torch.Tensor,
        captions: _Captions,
        guidance: float,
        *,
        given: torch.Tensor | None,
    ) -> list[torch.Tensor | None]:
        """Each selected expert's guided velocity on the samples routed to it (None if unused).

        A clip is routed as a whole: the expert sees every frame of the clips it runs on.
        """
        velocities: list[torch.Tensor | None] = []
        for k, expert in enumerate(self.experts):
            rows = torch.nonzero(weights[:, k] > 0).flatten()
            if rows.numel() == 0:
                velocities.append(None)
                continue
            xk, sk = x[rows], sigma[rows]
            gk = None if given is None else given[rows]
            if guidance == 1.0:
                vk = velocity(expert, xk, sk, captions.text[rows], captions.mask[rows], first_frame_given=gk)
            else:
                both = velocity(
                    expert,
                    torch.cat([xk, xk]),
                    torch.cat([sk, sk]),
                    torch.cat([captions.null_text[rows], captions.text[rows]]),
                    torch.cat([captions.null_mask[rows], captions.mask[rows]]),
                    first_frame_given=None if gk is None else torch.cat([gk, gk]),
                )
                unconditional, conditional = both.chunk(2)
                vk = unconditional + guidance * (conditional - unconditional)
            full = torch.zeros_like(x)
            full[rows] = vk.to(x.dtype)
            velocities.append(full)
        return velocities

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """[C, H, W] (or [C, T, H, W] for video) the experts denoise."""
        if self.config.latent_shape is not None:
            return tuple(int(v) for v in self.config.latent_shape)
        config: Any = self.experts[0].config
        return int(config.in_channels), int(config.sample_size), int(config.sample_size)


def ddm_pipeline_class(experts: int) -> type[DDMPipeline]:
    """A DDMPipeline whose __init__ names expert_0 … expert_{K-1} as components.

    diffusers' DiffusionPipeline.from_pretrained reads a pipeline's components from its
    __init__ signature; the model directory's pipeline_ddm.py builds this class for its K.
    """
    names = [f"expert_{k}" for k in range(experts)]

    def init(self: DDMPipeline, **kwargs: Any) -> None:
        members = [kwargs.pop(name) for name in names]
        DDMPipeline.__init__(self, experts=members, **kwargs)

    base = [p for name, p in inspect.signature(DDMPipeline.__init__).parameters.items() if name != "experts"]
    empty = inspect.Parameter.empty
    parameters = [p for p in base if p.default is empty]  # self, then the required components
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in names]
    parameters += [p for p in base if p.default is not empty]
    init.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return type("DDMPipeline", (DDMPipeline,), {"__init__": init, "__module__": __name__})


def _scheduler_class() -> Any:
    return FlowMatchEulerDiscreteScheduler


def flow_match_scheduler() -> Any:
    """The scheduler of the shared forward process: x_t = (1 − σ)·x0 + σ·ε, timestep 1000·σ, no shift."""
    return _scheduler_class()(num_train_timesteps=int(flow.TIMESTEP_SCALE), shift=1.0)
