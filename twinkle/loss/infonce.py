"""``InfonceLoss``: contrastive loss over L2-normalised embeddings grouped as ``[query, positive, negatives...]``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from twinkle.loss.base import Loss

__all__ = ["InfonceLoss"]


class InfonceLoss(Loss):
    """InfoNCE: cross-entropy of ``query · docs / temperature`` with the query's own positive as the target.

    ``outputs['embeddings']`` ``[N, D]`` are already L2-normalised (``task='embedding'``). ``labels`` ``[N]`` (or
    ``[N, ...]``, first column read) mark the start of each group ``[query, positive, negatives...]`` with 1.

    Args:
        temperature: the logit scale 1/τ.
        use_batch: score each query against every document of the batch (other groups' documents become
            negatives); otherwise only against its own group. Across ranks, documents are all-gathered and only
            the local shard keeps gradients.
        hard_negatives: use at most this many of each group's negatives (None: all).
        mask_fake_negative: mask documents scoring above the positive plus ``fake_neg_margin``.
        include_qq / include_dd: add query-query / positive-document logits as extra negatives.
        process_group: the group to gather documents over (default: the world when initialised).

    The loss is averaged over groups (``num_tokens=0``).
    """

    require_logps = False

    def __init__(self, temperature: float = 0.1, use_batch: bool = True, hard_negatives: int | None = None,
                 mask_fake_negative: bool = False, fake_neg_margin: float = 0.1, include_qq: bool = False,
                 include_dd: bool = False, process_group: Any = None) -> None:
        if not temperature > 0:
            raise ValueError(f"InfonceLoss: temperature must be > 0, got {temperature}")
        self.temperature, self.use_batch, self.hard_negatives = float(temperature), use_batch, hard_negatives
        self.mask_fake_negative, self.fake_neg_margin = mask_fake_negative, float(fake_neg_margin)
        self.include_qq, self.include_dd, self.process_group = include_qq, include_dd, process_group

    @staticmethod
    def _groups(labels: torch.Tensor, n: int) -> list[tuple[int, int]]:
        flags = labels if labels.dim() == 1 else labels[:, 0]
        starts = [int(i) for i in (flags == 1).nonzero(as_tuple=True)[0]]
        if not starts or starts[0] != 0:
            raise ValueError("InfonceLoss: labels must mark the first row of each [query, positive, ...] group with 1")
        ends = [*starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                raise ValueError(f"InfonceLoss: the group starting at row {s} has no positive (needs >= 2 rows)")
        return list(zip(starts, ends, strict=True))

    def _gather(self, docs: torch.Tensor) -> tuple[torch.Tensor, int]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.process_group) == 1:
            return docs, 0
        world = dist.get_world_size(self.process_group)
        sizes = [torch.zeros(1, dtype=torch.long, device=docs.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([docs.shape[0]], device=docs.device), group=self.process_group)
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros(width, docs.shape[1], dtype=docs.dtype, device=docs.device)
        padded[: docs.shape[0]] = docs
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach(), group=self.process_group)
        rank = dist.get_rank(self.process_group)
        parts[rank] = padded  # only the local shard carries gradients
        offset = sum(int(sizes[r].item()) for r in range(rank))
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]), offset

    def __call__(self, inputs: dict[str, Any], outputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        emb = outputs.get("embeddings")
        if emb is None:
            raise KeyError("InfonceLoss needs outputs['embeddings']; run the model with task='embedding'")
        emb = emb.float()
        labels = torch.as_tensor(inputs["labels"]).to(emb.device)
        groups = self._groups(labels, emb.shape[0])
        queries, docs_per_group = [], []
        for s, e in groups:
            queries.append(s)
            members = list(range(s + 1, e))
            if self.hard_negatives is not None:
                members = members[: 1 + self.hard_negatives]
            docs_per_group.append(members)
        doc_rows = [r for members in docs_per_group for r in members]
        docs = emb[doc_rows]
        q = emb[queries]
        losses = []
        if self.use_batch:
            all_docs, offset = self._gather(docs)
            logits = q @ all_docs.T / self.temperature  # [G, all docs]
            positions, pos = [], 0
            for members in docs_per_group:
                positions.append(offset + pos)
                pos += len(members)
            target = torch.tensor(positions, device=emb.device)
            if self.mask_fake_negative:
                pos_logit = logits.gather(1, target[:, None])
                fake = logits > pos_logit + self.fake_neg_margin / self.temperature
                fake.scatter_(1, target[:, None], False)
                logits = logits.masked_fill(fake, float("-inf"))
            extra = []
            if self.include_qq:
                qq = q @ q.T / self.temperature
                eye = torch.eye(len(queries), dtype=torch.bool, device=emb.device)
                extra.append(qq.masked_fill(eye, float("-inf")))
            if self.include_dd:
                positives = emb[[members[0] for members in docs_per_group]]
                dd = positives @ all_docs.T / self.temperature
                dd = dd.scatter(1, target[:, None], float("-inf"))
                extra.append(dd)
            if extra:
                logits = torch.cat([logits, *extra], dim=1)
            loss = F.cross_entropy(logits, target)
        else:
            for qi, members in zip(queries, docs_per_group, strict=True):
                logits = (emb[qi] @ emb[members].T / self.temperature)[None]
                losses.append(F.cross_entropy(logits, torch.zeros(1, dtype=torch.long, device=emb.device)))
            loss = torch.stack(losses).mean()
        return {"loss": loss, "num_tokens": 0}
