"""Token and cost estimates against OpenAI's published examples; the price table; the budget."""

from __future__ import annotations

import pytest

from nmid_desktop.core.errors import ConfigError
from nmid_desktop.core.paths import config_dir
from nmid_desktop.lmm.cost import (
    BudgetExceeded,
    BudgetGuard,
    ChatPrice,
    CostEstimate,
    PriceTable,
    chat_estimate,
    check_budget,
    image_estimate,
    image_tokens,
    scaled_size,
)

TILES = ChatPrice(2.5, 10.0, "tiles", 85, 170)


@pytest.mark.parametrize(
    ("size", "detail", "tokens"),
    [
        ((1024, 1024), "high", 765),  # 768 x 768 -> 4 tiles: 85 + 4 * 170 (OpenAI's example)
        ((2048, 4096), "high", 1105),  # 1024 x 2048 -> 768 x 1536 -> 6 tiles (OpenAI's example)
        ((4096, 8192), "low", 85),  # low detail is a flat fee
        ((200, 200), "high", 255),  # small images are not enlarged: one tile
        ((1024, 1024), "auto", 765),  # auto counted as high, to stay on the safe side
    ],
)
def test_tile_formula_matches_openai_examples(size, detail, tokens) -> None:
    assert image_tokens(*size, detail, TILES) == tokens


def test_patch_formula_matches_openai_examples() -> None:
    plain = ChatPrice(0.4, 1.6, "patches", patch_multiplier=1.0)
    assert image_tokens(1024, 1024, "high", plain) == 1024  # 32 x 32 patches
    assert image_tokens(1800, 2400, "high", plain) == 1452  # scaled to fit 1536 patches (OpenAI's example)
    mini = ChatPrice(0.4, 1.6, "patches", patch_multiplier=1.62)
    assert image_tokens(1024, 1024, "low", mini) == 1659  # 1024 * 1.62, rounded up


def test_scaled_size_never_enlarges() -> None:
    assert scaled_size(2000, 1000, 768) == (768, 384)
    assert scaled_size(300, 200, 768) == (300, 200)


def test_shipped_price_table_knows_current_models_and_snapshots() -> None:
    prices = PriceTable.load()
    mini = prices.chat("gpt-4.1-mini")
    assert mini is not None and mini.image_tokens == "patches"
    assert prices.chat("gpt-4.1-mini-2025-04-14") == mini  # dated snapshot -> undated entry
    assert prices.chat("llava:13b").input_per_1m == 0.0  # wildcard entry for local models
    assert prices.chat("some-unknown-model") is None
    assert prices.image("gpt-image-1").cost(2, "low") == pytest.approx(0.022)


def test_user_price_file_overrides_entries(tmp_path) -> None:
    config_dir().mkdir(parents=True, exist_ok=True)
    (config_dir() / "prices.toml").write_text('[chat."gpt-4.1-mini"]\ninput_per_1m = 9.0\noutput_per_1m = 9.0\n')
    prices = PriceTable.load()
    assert prices.chat("gpt-4.1-mini").input_per_1m == 9.0
    assert prices.chat("gpt-4.1") is not None  # the rest of the shipped table stays


def test_bad_price_files_name_themselves(tmp_path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("[chat.x\n")
    with pytest.raises(ConfigError, match="p.toml"):
        PriceTable.load(bad)
    bad.write_text('[chat."x"]\ninput_per_1m = 1\noutput_per_1m = 1\nimage_tokens = "pixels"\n')
    with pytest.raises(ConfigError, match="image_tokens"):
        PriceTable.load(bad)


def test_chat_estimate_adds_text_and_downscaled_images(prices) -> None:
    estimate = chat_estimate(
        prices, "vision-1", text="x" * 400, image_sizes=[(2048, 2048), (100, 50)], detail="high",
        max_side=512, tokens_out=100,
    )
    # 100 text tokens + 2 messages * 4; 2048 -> 512 x 512: 1 tile = 255; 100 x 50: 1 tile = 255
    assert estimate.tokens_in == 100 + 8 + 255 + 255
    assert estimate.cost_usd == pytest.approx((618 * 1.0 + 100 * 4.0) / 1e6)
    assert estimate.cost_known and "about $" in estimate.summary()


def test_unknown_models_say_cost_unknown(prices) -> None:
    estimate = chat_estimate(prices, "mystery", text="hi", image_sizes=[], detail="low", max_side=512, tokens_out=10)
    assert not estimate.cost_known and estimate.cost_usd == 0.0
    assert "cost unknown for mystery" in estimate.summary()
    total = CostEstimate().add(estimate).add(image_estimate(prices, "image-1", prompt="p", n=2))
    assert total.calls == 2 and total.images_out == 2 and total.cost_usd == pytest.approx(0.10)
    assert "cost unknown" in total.summary()


def test_budget_check_names_the_setting() -> None:
    check_budget(CostEstimate(cost_usd=1.0), spent_usd=3.0, budget_usd=5.0)
    with pytest.raises(BudgetExceeded, match="lmm.budget_usd"):
        check_budget(CostEstimate(cost_usd=2.5), spent_usd=3.0, budget_usd=5.0)


def test_budget_guard_reserves_and_settles() -> None:
    guard = BudgetGuard(budget_usd=1.0, spent_usd=0.5)
    assert guard.reserve(0.3)
    assert not guard.reserve(0.3)  # 0.5 + 0.3 reserved + 0.3 > 1.0
    guard.settle(0.3, 0.1)
    assert guard.spent_usd == pytest.approx(0.6) and guard.reserved_usd == 0.0
    assert guard.reserve(0.3)
