"""The micrograph ViT: shapes, the local and global attention masks, and where information flows."""

from __future__ import annotations

import pytest
import torch

from nmid_desktop.ml.vit import MicrographViT, ViTConfig, global_attention_mask, local_attention_mask

torch.set_num_threads(1)  # one thread: robust on a CPU shared with other jobs


def _patch_index(r: int, c: int, grid: int = 7) -> int:
    return 1 + r * grid + c  # token 0 is CLS


def test_shapes_follow_the_paper() -> None:
    torch.manual_seed(0)
    model = MicrographViT().eval()
    cfg = model.cfg
    assert (cfg.image_size, cfg.patch_size, cfg.grid, cfg.dim, cfg.heads, cfg.head_dim) == (224, 32, 7, 128, 4, 32)
    x = torch.rand(3, 1, 224, 224) * 2 - 1
    with torch.no_grad():
        assert model.tokens(x).shape == (3, 50, 128)
        assert model.forward_local(x).shape == (3, 50, 128)
        out = model(x)
    assert out.shape == (3, 128)
    assert torch.isfinite(out).all()


def test_wrong_input_size_is_refused() -> None:
    with pytest.raises(ValueError, match="224"):
        MicrographViT()(torch.zeros(1, 1, 200, 200))


def test_local_mask_is_the_3x3_neighbourhood() -> None:
    mask = local_attention_mask(7, radius=1)
    assert mask.shape == (50, 50)
    assert mask[0].sum() == 1 and mask[0, 0]  # CLS only sees itself in stage 1
    assert not mask[1:, 0].any()  # no patch sees CLS in stage 1
    for r in range(7):
        for c in range(7):
            row = mask[_patch_index(r, c)]
            allowed = {
                _patch_index(rr, cc) for rr in range(7) for cc in range(7) if abs(rr - r) <= 1 and abs(cc - c) <= 1
            }
            assert set(torch.nonzero(row).flatten().tolist()) == allowed
    # corner, edge and interior patches see 4, 6 and 9 patches
    assert [int(mask[_patch_index(*rc)].sum()) for rc in [(0, 0), (0, 3), (3, 3)]] == [4, 6, 9]


def test_global_mask_routes_through_cls() -> None:
    mask = global_attention_mask(7)
    assert mask[0].all()
    for i in range(1, 50):
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == {0, i}


def test_attention_weights_vanish_outside_the_mask() -> None:
    torch.manual_seed(1)
    model = MicrographViT().eval()
    attn = model.local_blocks[0].attn
    x = torch.randn(2, 50, 128)
    mask = model.local_mask
    with torch.no_grad():
        out_fast = attn(x, mask)
        out_slow, weights = attn(x, mask, return_weights=True)
    assert weights.shape == (2, 4, 50, 50)
    assert torch.all(weights[:, :, ~mask] == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 50), atol=1e-5)
    assert torch.allclose(out_fast, out_slow, atol=1e-5)  # SDPA path honours the same mask


def test_stage_one_keeps_a_change_inside_its_neighbourhood() -> None:
    torch.manual_seed(2)
    model = MicrographViT(ViTConfig(local_depth=1, global_depth=1)).eval()
    x = torch.rand(1, 1, 224, 224) * 2 - 1
    y = x.clone()
    y[..., 3 * 32 : 4 * 32, 3 * 32 : 4 * 32] = -1.0  # change patch (3, 3) only
    with torch.no_grad():
        changed = (model.forward_local(x) - model.forward_local(y)).abs().amax(-1)[0] > 0  # (50,)
        emb_x, emb_y = model(x), model(y)
    expected = {_patch_index(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}
    assert set(torch.nonzero(changed).flatten().tolist()) == expected
    # ...and the global stage carries it to the CLS embedding.
    assert not torch.allclose(emb_x, emb_y)


def test_cls_only_last_block_equals_the_full_block() -> None:
    torch.manual_seed(3)
    model = MicrographViT().eval()
    x = torch.rand(2, 1, 224, 224) * 2 - 1
    with torch.no_grad():
        t = model.forward_local(x)
        t = model.global_blocks[0](t, model.global_mask)
        full = model.global_blocks[1](t, model.global_mask)[:, 0]
        assert torch.allclose(model(x), model.norm(full), atol=1e-5)
