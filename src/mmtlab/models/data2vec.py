"""data2vec: a student encoder per modality and a teacher that is an exponential moving average
of the student's transformer blocks (Baevski et al. 2022; data2vec 2.0, Baevski et al. 2023).

The student is an ordinary LayerSpec encoder whose layers attend within one stream per modality
(`modality_specific` over the model's modalities), so its parameter names are those of a dual
encoder (`image_embed.*`, `text_embed.*`, `encoder.layers.N.streams.image.*`, `norm.image.*`) and
`train.init_from` can start a multimodal model from it. Around it: a mask embedding per modality,
a regression head (data2vec) or a light convolutional decoder (data2vec 2.0), and the teacher.

The teacher copies only the transformer blocks (fairseq's ema_transformer_only / ema_layers_only):
its input is the student's own embedding of the unmasked sample (patch projection + positions,
token embeddings, conv features + conv positions), computed without gradient. Its update,
teacher <- tau * teacher + (1 - tau) * student with tau annealed linearly from tau_0 to tau_e, runs
once per optimizer step (`update_teacher`, called by the data2vec objective's
after_optimizer_step hook). The masking, the targets and the loss are in objectives/data2vec.py.

Which layer output is a target (config `target_layer`): our blocks are pre-LN,
    h = x + Attn(LN(x));  out = h + FFN(LN(h))
"ffn" takes FFN(LN(h)), the FFN output before the final residual add -- what data2vec takes from
its post-LN text and speech blocks and data2vec 2.0 from every block; "block" takes `out`, the
residual stream after the block -- what data2vec takes from its pre-LN (BEiT) vision blocks.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.common import ModelBase, init_weights, require_vocab
from mmtlab.models.fusion import FusionEncoder, build_layout
from mmtlab.models.speech import SpeechEmbedding
from mmtlab.models.text import TextEmbedding
from mmtlab.models.vision import PatchEmbedding


def ema_decay_at(update: int, start: float, end: float, anneal_steps: int | None) -> float:
    """Decay of the `update`-th teacher update (1-based): linear from `start` to `end` over
    `anneal_steps` updates, then `end` (fairseq data2vec get_annealed_rate)."""
    if not anneal_steps or update >= anneal_steps:
        return end
    return end - (end - start) * (1 - update / anneal_steps)


class ConvDecoder(nn.Module):
    """data2vec 2.0's decoder (Decoder1d / Decoder2d): `layers` x (grouped conv -> LayerNorm
    without affine -> GELU, residual), then a linear projection. Images run it on the patch grid."""

    def __init__(self, dim: int, layers: int, kernel: int, groups: int, spatial: bool):
        super().__init__()
        conv = nn.Conv2d if spatial else nn.Conv1d
        self.spatial = spatial
        self.convs = nn.ModuleList(conv(dim, dim, kernel, padding=kernel // 2, groups=groups) for _ in range(layers))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        b, n, d = x.shape
        h = x.transpose(1, 2)
        if self.spatial:
            h = h.reshape(b, d, *grid)
        for conv in self.convs:
            y = conv(h)[..., : h.shape[-1]]  # an even kernel yields one extra position
            y = F.gelu(F.layer_norm(y.movedim(1, -1), (d,)).movedim(-1, 1))
            h = h + y
        return self.proj(h.reshape(b, d, n).transpose(1, 2))


class Data2Vec(ModelBase):
    contrastive = None  # no contrastive head (the training loop asks)
    mlm = None
    # num_params counts the student: the teacher is a moving average of its blocks, not trained.
    untrained_prefixes = ("teacher.",)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.data2vec is None:
            raise ValueError("model.data2vec is not set (arch: data2vec)")
        self.cfg = cfg
        dc = cfg.data2vec
        self.modalities = tuple(dc.modalities)
        d = cfg.width
        if "text" in self.modalities:
            self.text_embed = TextEmbedding(require_vocab(cfg), d, cfg.text.max_len)
        if "image" in self.modalities:
            self.image_embed = PatchEmbedding(
                cfg.image.size, cfg.image.patch, d, cfg.image.channels, cls_token=True, stem=cfg.image.stem
            )
        if "speech" in self.modalities:
            self.speech_embed = SpeechEmbedding(cfg.speech, d)
        # Text is masked with the tokenizer's [MASK] id; the other modalities get a learned vector.
        self.mask_emb = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m in self.modalities if m != "text"})
        self.layout = build_layout("modality_specific", cfg.depth, streams=self.modalities)
        self.encoder = FusionEncoder(self.layout, d, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.gelu)
        self.norm = nn.ModuleDict({m: nn.LayerNorm(d) for m in self.modalities})
        if dc.efficient:
            self.decoder = nn.ModuleDict(
                {
                    m: ConvDecoder(d, mc.decoder_layers, mc.decoder_kernel, mc.decoder_groups, spatial=m == "image")
                    for m in self.modalities
                    for mc in [getattr(dc, m)]
                }
            )
        else:
            self.head = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})  # fairseq's final_proj
        init_weights(self, len(self.layout), extra=self.mask_emb.values())  # modality_specific: no cross-attention
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    # -- student inputs: local features, then mask embedding + positions (+ CLS) ------------------

    def extra_tokens(self, m: str) -> int:
        return 1 if m == "image" else 0

    def local(self, m: str, x: Tensor) -> Tensor:
        """Per-position features before positions: patch projections [B, N, D], conv frames
        [B, F, D] or token embeddings [B, L, D] (x: images, waveforms or token ids)."""
        if m == "image":
            return self.image_embed.proj(x).flatten(2).transpose(1, 2)
        if m == "speech":
            return self.speech_embed.local(x)
        return self.text_embed.tok(x)

    def contextualize(self, m: str, local: Tensor, hide: Tensor | None = None, grid: tuple[int, int] | None = None):
        """The transformer input: hidden positions replaced by the mask embedding, then positions
        added (and the image CLS token prepended)."""
        if hide is not None and m != "text":
            local = torch.where(hide[..., None], self.mask_emb[m].to(local.dtype), local)
        if m == "image":
            e = self.image_embed
            x = local + e.pos_embed(grid or (e.grid, e.grid)).to(local.dtype)
            return torch.cat([e.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if m == "speech":
            return self.speech_embed.add_positions(local)
        n = local.shape[1]
        if n > self.text_embed.pos.shape[0]:
            raise ValueError(f"text of {n} tokens is longer than the model's max_len {self.text_embed.pos.shape[0]}")
        return local + self.text_embed.pos[:n]

    # -- student and teacher ----------------------------------------------------------------------

    def student(self, m: str, x: Tensor, pad: Tensor | None) -> Tensor:
        """Final (normed) student states [B, N, D]."""
        return self.norm[m](self.encoder({m: x}, {m: pad})[m])

    @torch.no_grad()
    def teacher_layers(self, m: str, x: Tensor, pad: Tensor | None, which: str) -> list[Tensor]:
        """Every teacher block's output for stream `m`: "block" (residual stream after the block)
        or "ffn" (the FFN output before the residual add, read with a forward hook)."""
        self.teacher.eval()
        outs: list[Tensor] = []
        if which == "block":
            h = {m: x}
            for layer in self.teacher.layers:
                h = layer(h, {m: pad})
                outs.append(h[m])
            return outs
        if which != "ffn":
            raise ValueError(f"target_layer must be 'ffn' or 'block', got {which!r}")
        hooks = [
            layer.stream(m).mlp.register_forward_hook(lambda _mod, _inp, out: outs.append(out))
            for layer in self.teacher.layers
        ]
        try:
            self.teacher({m: x}, {m: pad})
        finally:
            for h in hooks:
                h.remove()
        return outs

    @torch.no_grad()
    def sync_teacher(self) -> None:
        """teacher := student blocks (at the start of training, as fairseq's make_ema_teacher)."""
        self.teacher.load_state_dict(self.encoder.state_dict())

    def teacher_decay(self, update: int | None = None) -> float:
        d = self.cfg.data2vec
        update = int(self.ema_updates) + 1 if update is None else update
        return ema_decay_at(update, d.ema_decay, d.ema_end_decay, d.ema_anneal_steps)

    @torch.no_grad()
    def update_teacher(self) -> float:
        """One EMA update, after an optimizer step: teacher <- tau * teacher + (1 - tau) * student."""
        tau = self.teacher_decay()
        if tau < 1:
            for t, s in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
                t.mul_(tau).add_(s, alpha=1 - tau)
        self.ema_updates += 1
        return tau

    # -- inference --------------------------------------------------------------------------------

    def forward(
        self,
        images: Tensor | None = None,
        tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        audio: Tensor | None = None,
        audio_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Final student states of whatever modalities are given, unmasked (for probes and use)."""
        inputs = {"image": images, "text": tokens, "speech": audio}
        out = {}
        for m, x in inputs.items():
            if x is None:
                continue
            if m not in self.modalities:
                raise ValueError(f"this data2vec model has no {m} encoder (modalities: {list(self.modalities)})")
            local = self.local(m, x)
            pad = None
            if m == "text":
                pad = None if text_mask is None or bool(text_mask.all()) else text_mask
            elif m == "speech":
                pad = self.speech_embed.frame_mask(audio_mask, local.shape[1])
            grid = (x.shape[-2] // self.cfg.image.patch, x.shape[-1] // self.cfg.image.patch) if m == "image" else None
            out[m] = self.student(m, self.contextualize(m, local, grid=grid), pad)
        if not out:
            raise ValueError("forward needs images, tokens or audio")
        return out
