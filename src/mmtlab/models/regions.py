"""Region embedding (ViLBERT/VOLTA): LayerNorm(W_f feature + W_g geometry), with a global [IMG]
region first whose feature is the mean of the visible regions and whose box is the whole image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtlab.batches import WHOLE_IMAGE_GEOMETRY, Regions


def global_region_feature(regions: Regions) -> Tensor:
    """[B, F]: mean feature of the real regions that masked region modelling did not hide.

    Hidden regions are left out (not averaged in as zeros), so [IMG] carries no trace of a masked
    region's feature; an ablation that replaces features changes [IMG] accordingly.
    """
    use = regions.mask if regions.masked is None else regions.mask & ~regions.masked
    w = use.to(regions.features.dtype).unsqueeze(-1)
    return (regions.features * w).sum(1) / w.sum(1).clamp_min(1.0)


class RegionEmbedding(nn.Module):
    def __init__(self, feature_dim: int, dim: int):
        super().__init__()
        self.feature = nn.Linear(feature_dim, dim)
        self.geometry = nn.Linear(5, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, regions: Regions) -> tuple[Tensor, Tensor | None]:
        """Tokens [B, 1 + R, D] ([IMG] first) and a key mask [B, 1 + R] (None when nothing is padded)."""
        b = len(regions)
        feats = torch.cat([global_region_feature(regions)[:, None], regions.features], dim=1)
        whole = torch.tensor(WHOLE_IMAGE_GEOMETRY, dtype=regions.geometry.dtype, device=regions.geometry.device)
        geom = torch.cat([whole.expand(b, 1, 5), regions.geometry], dim=1)
        x = self.norm(self.feature(feats) + self.geometry(geom))
        if bool(regions.mask.all()):
            return x, None
        return x, torch.cat([regions.mask.new_ones(b, 1), regions.mask], dim=1)
