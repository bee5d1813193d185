"""Mask distillation loss against a hand computation; zero for perfect masks; IoU metric."""

from __future__ import annotations

import math

import pytest
import torch

from diff2scene.net3d.loss import ViewBatch, distillation_loss, mask_iou, view_loss


def test_loss_equals_hand_computation() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])  # 3 voxels, D = 2
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # 2 masks
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    s = 1 / (1 + math.exp(-1))
    s2 = 1 / (1 + math.exp(-2))
    # Mask 0 predictions: sigmoid(1), sigmoid(0), sigmoid(-1); mask 1: sigmoid(0), (2), (1).
    p0 = [s, 0.5, 1 - s]
    p1 = [0.5, s2, s]
    cos0 = p0[0] / math.sqrt(sum(v * v for v in p0))
    cos1 = (p1[1] + p1[2]) / (math.sqrt(sum(v * v for v in p1)) * math.sqrt(2))
    expected = (1 - cos0) + (1 - cos1)
    assert float(view_loss(feats, emb, target)) == pytest.approx(expected, rel=1e-6)
    # Two spaces add up; two views average; only the view's support is read.
    big = torch.cat([torch.zeros(2, 2), feats])
    view = ViewBatch(torch.tensor([2, 3, 4]), target, {"a": emb, "b": emb})
    got = distillation_loss({"a": big, "b": big}, [view, view])
    assert float(got) == pytest.approx(2 * expected, rel=1e-6)


def test_loss_is_zero_for_perfect_masks_and_skips_empty_ones() -> None:
    target = torch.tensor([[0.9, 0.2, 0.1, 0.7], [0.1, 0.8, 0.6, 0.3], [0.0, 0.0, 0.0, 0.0]])
    emb = torch.eye(3)
    feats = torch.logit(target.clamp(1e-4, 1 - 1e-4)).T.contiguous()  # (V, D): sigmoid gives B3d
    feats[:, 2] = 0.0
    assert float(view_loss(feats, emb, target)) == pytest.approx(0.0, abs=1e-6)
    feats[0, 0] = -3.0
    assert float(view_loss(feats, emb, target)) > 1e-3


def test_gradient_reaches_the_features() -> None:
    feats = torch.randn(5, 3, requires_grad=True)
    view = ViewBatch(torch.arange(5), (torch.rand(2, 5) > 0.5).float(), {"x": torch.randn(2, 3)})
    distillation_loss({"x": feats}, [view]).backward()
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0


def test_mask_iou_compares_strongest_mask_assignments() -> None:
    # 4 voxels, 2 masks in 1-d embedding space: mask 0 = +1, mask 1 = -1.
    feats = torch.tensor([[5.0], [5.0], [-5.0], [0.2]])
    emb = {"x": torch.tensor([[1.0], [-1.0]])}
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    # Predicted owners: 0, 0, 1, 0 -> mask 0 IoU 2/3, mask 1 IoU 1/2.
    view = ViewBatch(torch.arange(4), target, emb)
    assert mask_iou({"x": feats}, [view], space="x") == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Scaling B'3d does not change it (the loss is scale-blind too); uncovered voxels are ignored.
    weak = ViewBatch(torch.arange(4), target * torch.tensor([1.0, 1.0, 1.0, 0.0]), emb)
    assert mask_iou({"x": feats * 0.01}, [weak], space="x") == pytest.approx(1.0)
