"""SD3Transformer2DModel: Stable Diffusion 3's MMDiT (joint image/text blocks), trained by flow matching.

Each joint block has an image and a context stream with their own projections; the two streams are
separate types (they read different tokens). The last block is `context_pre_only` (no context output
projection or feed-forward, a 2·d instead of 6·d context adaLN): its matrices form their own types by
shape, and a shallower subnet's last block takes them from the supernet's last block.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fine_deploy.backbones.base import Adapter, Found, InputSpec, stack

TEXT_TOKENS = 154  # CLIP-L/G (77) + T5 (77) tokens, SD3's default max_sequence_length


class SD3Adapter(Adapter):
    class_name = "SD3Transformer2DModel"
    component = "transformer"
    sample_input = "hidden_states"
    conditioning = "text"
    objective = "flow_matching"
    scheduler = "FlowMatchEulerDiscreteScheduler"
    latent = True
    depth_stack = "transformer_blocks"
    pipeline = "StableDiffusion3Pipeline"
    components = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3",
                  "vae", "scheduler")

    def matrices(self, model: nn.Module) -> list[Found]:
        out: list[Found] = []
        for i, blk in enumerate(model.transformer_blocks):
            p = f"transformer_blocks.{i}"
            a = f"{p}.attn"
            groups = [("qkv", [f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"]), ("attn_out", [f"{a}.to_out.0"]),
                      ("ctx_qkv", [f"{a}.add_q_proj", f"{a}.add_k_proj", f"{a}.add_v_proj"]),
                      ("fc1", [f"{p}.ff.net.0.proj"]), ("fc2", [f"{p}.ff.net.2"]), ("adaln", [f"{p}.norm1.linear"]),
                      ("ctx_adaln", [f"{p}.norm1_context.linear"])]
            if getattr(blk.attn, "to_add_out", None) is not None:
                groups.append(("ctx_out", [f"{a}.to_add_out"]))
            if getattr(blk, "ff_context", None) is not None:
                groups += [("ctx_fc1", [f"{p}.ff_context.net.0.proj"]), ("ctx_fc2", [f"{p}.ff_context.net.2"])]
            if getattr(blk, "attn2", None) is not None:  # SD3.5's dual attention layers
                groups += [("qkv", [f"{p}.attn2.to_q", f"{p}.attn2.to_k", f"{p}.attn2.to_v"]),
                           ("attn_out", [f"{p}.attn2.to_out.0"])]
            for role, mods in groups:
                name = f"{p}.{role}" if not mods[0].startswith(f"{p}.attn2.") else f"{p}.attn2_{role}"
                m, shape = stack(model, name, mods)
                out.append((role, m, shape))
        return out

    def knob_notes(self) -> dict[str, str]:
        return {"rank": "every factorised type (image and context streams apart)",
                "depth": "num_layers (σ interpolated along depth; the context_pre_only last block maps to the "
                         "supernet's last block)",
                "width": "none: one hidden width for every joint block"}

    def resolution_options(self, config: dict[str, Any]) -> tuple[list[int] | None, str, int, int]:
        p, limit = int(config["patch_size"]), config.get("pos_embed_max_size")
        if not limit:
            return super().resolution_options(config)
        return None, f"a multiple of {p} from {p} to {limit * p} (pos_embed_max_size {limit})", p, limit * p

    def inputs(self, config: dict[str, Any], batch: int = 1, resolution: int | None = None,
               tokens: int | None = None) -> list[InputSpec]:
        res = int(resolution or config["sample_size"])
        return [InputSpec("hidden_states", (batch, config["in_channels"], res, res), "float32"),
                InputSpec("encoder_hidden_states", (batch, tokens or TEXT_TOKENS, int(config["joint_attention_dim"])),
                          "float32"),
                InputSpec("pooled_projections", (batch, int(config["pooled_projection_dim"])), "float32"),
                InputSpec("timestep", (batch,), "int64", (0, 1000))]
