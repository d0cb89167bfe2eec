"""Token and cost estimates before a batch, from image sizes and an editable price table.

Image tokens follow OpenAI's published formulas (platform.openai.com, "Images and
vision", calculating costs):

* ``tiles`` (GPT-4o, GPT-4.1, o3): ``detail: low`` costs ``tile_base`` tokens. For
  ``high`` (and ``auto``, counted as high to stay on the safe side) the image is
  fitted into 2048 x 2048, then scaled so its shortest side is at most 768, and
  costs ``tile_base + tile_tokens * (number of 512 px tiles)``.
  A 1024 x 1024 image at high detail: 768 x 768, 4 tiles, 85 + 4 * 170 = 765 tokens.
* ``patches`` (GPT-4.1-mini/nano, o4-mini, GPT-5-mini/nano): the number of
  32 x 32 patches covering the image, the image scaled down to fit 1536 patches
  when bigger, times a per-model multiplier.

Text is estimated at four characters per token, the usual rule of thumb for
English; output tokens are the caller's estimate. A model missing from the price
table has an unknown cost, shown as such and not held to the budget.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmid_desktop.core.errors import ConfigError, NmidError
from nmid_desktop.core.paths import config_dir, resources_dir

PRICES_FILE = "prices.toml"
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators of one chat message


class BudgetExceeded(NmidError):
    """Spending so far plus the estimate would pass ``lmm.budget_usd``."""


@dataclass(frozen=True)
class ChatPrice:
    """Price and image-token rule of one chat model."""

    input_per_1m: float
    output_per_1m: float
    image_tokens: str = "tiles"
    tile_base: int = 85
    tile_tokens: int = 170
    patch_multiplier: float = 1.0
    fixed_tokens: int = 85

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        """USD for one call."""
        return (tokens_in * self.input_per_1m + tokens_out * self.output_per_1m) / 1e6


@dataclass(frozen=True)
class ImagePrice:
    """Price of one image-generation model."""

    per_image: dict[str, float]
    input_per_1m: float = 0.0

    def cost(self, n_images: int, quality: str | None = None, prompt_tokens: int = 0) -> float:
        """USD for ``n_images`` images at ``quality`` (``default`` when None or not listed)."""
        each = self.per_image.get(quality or "default", self.per_image.get("default"))
        if each is None:
            each = max(self.per_image.values())
        return n_images * each + prompt_tokens * self.input_per_1m / 1e6


def _lookup(table: dict[str, Any], model: str) -> Any:
    if model in table:
        return table[model]
    undated = _DATED.sub("", model)
    if undated in table:
        return table[undated]
    matches = [key for key in table if any(c in key for c in "*?[") and fnmatch.fnmatchcase(model, key)]
    if not matches:
        return None
    return table[max(matches, key=len)]


@dataclass
class PriceTable:
    """Per-model prices: ``resources/prices.toml`` merged with the user's ``<config>/prices.toml``."""

    chat_models: dict[str, ChatPrice] = field(default_factory=dict)
    image_models: dict[str, ImagePrice] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """Read the price table(s).

        Args:
            path: One specific file; by default the shipped table plus the user's override.

        Raises:
            ConfigError: A file is not valid TOML or an entry has wrong fields.
        """
        table = cls()
        paths = [path] if path is not None else [resources_dir() / PRICES_FILE, config_dir() / PRICES_FILE]
        for candidate in paths:
            if candidate is not None and candidate.is_file():
                table._merge_file(candidate)
        return table

    def _merge_file(self, path: Path) -> None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
        try:
            for name, entry in (data.get("chat") or {}).items():
                self.chat_models[name] = ChatPrice(**entry)
            for name, entry in (data.get("image") or {}).items():
                per_image = entry.get("per_image")
                if isinstance(per_image, (int, float)):
                    per_image = {"default": float(per_image)}
                self.image_models[name] = ImagePrice(
                    per_image={k: float(v) for k, v in (per_image or {}).items()},
                    input_per_1m=float(entry.get("input_per_1m", 0.0)),
                )
        except (TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: bad price entry ({exc})") from exc
        for name, price in self.chat_models.items():
            if price.image_tokens not in ("tiles", "patches", "fixed"):
                raise ConfigError(f"{path}: chat.{name}.image_tokens must be tiles, patches or fixed")

    def chat(self, model: str) -> ChatPrice | None:
        """The chat model's price, or None when unknown."""
        return _lookup(self.chat_models, model)

    def image(self, model: str) -> ImagePrice | None:
        """The image model's price, or None when unknown."""
        return _lookup(self.image_models, model)


# ----------------------------------------------------------------------------- tokens

def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size an image is sent at: downscaled (never upscaled) so its long side is at most ``max_side``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width} x {height}")
    long_side = max(width, height)
    if max_side <= 0 or long_side <= max_side:
        return width, height
    scale = max_side / long_side
    return max(1, round(width * scale)), max(1, round(height * scale))


def _tile_tokens(width: int, height: int, detail: str, base: int, per_tile: int) -> int:
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        s = 2048 / max(w, h)
        w, h = w * s, h * s
    if min(w, h) > 768:
        s = 768 / min(w, h)
        w, h = w * s, h * s
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return base + per_tile * tiles


def _patch_tokens(width: int, height: int, multiplier: float) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        r = math.sqrt(32 * 32 * 1536 / (width * height))
        r *= min(math.floor(width * r / 32) / (width * r / 32), math.floor(height * r / 32) / (height * r / 32))
        patches = min(1536, math.ceil(width * r / 32) * math.ceil(height * r / 32))
    return math.ceil(patches * multiplier)


def image_tokens(width: int, height: int, detail: str = "high", price: ChatPrice | None = None) -> int:
    """Input tokens of one image as sent (after our own downscaling).

    Args:
        width: Width in pixels of the image sent.
        height: Height in pixels.
        detail: ``low``, ``high`` or ``auto`` (counted as high).
        price: The model's entry; None uses the GPT-4o tile rule (85 + 170 per tile).

    Returns:
        Token count.
    """
    price = price or ChatPrice(0.0, 0.0)
    if price.image_tokens == "patches":
        return _patch_tokens(width, height, price.patch_multiplier)
    if price.image_tokens == "fixed":
        return price.fixed_tokens
    return _tile_tokens(width, height, detail, price.tile_base, price.tile_tokens)


def text_tokens(text: str) -> int:
    """Rough token count of a text (four characters per token)."""
    return math.ceil(len(text) / 4)


# ----------------------------------------------------------------------------- estimates

@dataclass
class CostEstimate:
    """What a batch will probably use and cost.

    Attributes:
        calls: API calls planned.
        tokens_in: Input tokens (text and images).
        tokens_out: Output tokens (a guess by the caller).
        images_out: Images to generate.
        cost_usd: Known cost in USD (parts with unknown prices are not in it).
        unknown_models: Models without a price: their part of the cost is unknown.
        cached_calls: Calls the disk cache will answer for free (already excluded above).
    """

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    images_out: int = 0
    cost_usd: float = 0.0
    unknown_models: set[str] = field(default_factory=set)
    cached_calls: int = 0

    @property
    def cost_known(self) -> bool:
        """True when every model of the batch has a price."""
        return not self.unknown_models

    def add(self, other: CostEstimate) -> CostEstimate:
        """Add another estimate into this one; returns self."""
        self.calls += other.calls
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.images_out += other.images_out
        self.cost_usd += other.cost_usd
        self.unknown_models |= other.unknown_models
        self.cached_calls += other.cached_calls
        return self

    def summary(self) -> str:
        """One line for people, e.g. ``12 calls, ~34,000 tokens in, ~3,000 out: about $0.0213``."""
        parts = [f"{self.calls} call{'s' if self.calls != 1 else ''}"]
        if self.tokens_in or self.tokens_out:
            parts.append(f"~{self.tokens_in:,} tokens in, ~{self.tokens_out:,} out")
        if self.images_out:
            parts.append(f"{self.images_out} image{'s' if self.images_out != 1 else ''} generated")
        if self.cached_calls:
            parts.append(f"{self.cached_calls} answered from the cache")
        text = ", ".join(parts)
        if self.unknown_models:
            names = ", ".join(sorted(self.unknown_models))
            known = f" (known part ${self.cost_usd:.4f})" if self.cost_usd else ""
            return f"{text}: cost unknown for {names}, not in the price table{known}"
        return f"{text}: about ${self.cost_usd:.4f}"


def chat_estimate(
    prices: PriceTable,
    model: str,
    *,
    text: str,
    image_sizes: list[tuple[int, int]],
    detail: str,
    max_side: int,
    tokens_out: int,
    messages: int = 2,
) -> CostEstimate:
    """Estimate one chat call.

    Args:
        prices: The price table.
        model: The chat model.
        text: All prompt text of the call.
        image_sizes: ``(width, height)`` of every image before our downscaling.
        detail: The ``detail`` sent with the images.
        max_side: ``lmm.image_max_side`` (images are downscaled to it first).
        tokens_out: Expected output tokens.
        messages: Number of chat messages (each has a small overhead).
    """
    price = prices.chat(model)
    tokens_in = text_tokens(text) + MESSAGE_OVERHEAD_TOKENS * messages
    for width, height in image_sizes:
        sw, sh = scaled_size(width, height, max_side)
        tokens_in += image_tokens(sw, sh, detail, price)
    estimate = CostEstimate(calls=1, tokens_in=tokens_in, tokens_out=tokens_out)
    if price is None:
        estimate.unknown_models.add(model)
    else:
        estimate.cost_usd = price.cost(tokens_in, tokens_out)
    return estimate


def image_estimate(prices: PriceTable, model: str, *, prompt: str, n: int, quality: str | None = None) -> CostEstimate:
    """Estimate one image-generation call of ``n`` images."""
    price = prices.image(model)
    tokens_in = text_tokens(prompt)
    estimate = CostEstimate(calls=1, tokens_in=tokens_in, images_out=n)
    if price is None:
        estimate.unknown_models.add(model)
    else:
        estimate.cost_usd = price.cost(n, quality, tokens_in)
    return estimate


def chat_cost(prices: PriceTable, model: str, tokens_in: int, tokens_out: int) -> float | None:
    """Actual cost of a call from the tokens the server reported; None when the price is unknown."""
    price = prices.chat(model)
    return None if price is None else price.cost(tokens_in, tokens_out)


def check_budget(estimate: CostEstimate, spent_usd: float, budget_usd: float) -> None:
    """Refuse a batch whose estimate would take spending past the cap.

    Raises:
        BudgetExceeded: If ``spent_usd + estimate.cost_usd > budget_usd``.
    """
    # Written as "not <=" so that a NaN budget or estimate refuses instead of switching the cap off.
    if not spent_usd + estimate.cost_usd <= budget_usd:
        raise BudgetExceeded(
            f"estimated ${estimate.cost_usd:.4f} on top of ${spent_usd:.4f} already spent would pass the budget "
            f"of ${budget_usd:.2f} (setting lmm.budget_usd); raise it or run fewer images"
        )


class BudgetGuard:
    """Holds a running batch to the cap: each call reserves its estimate before it is sent.

    Used from the job's thread only (the thread that also writes to the store).
    """

    def __init__(self, budget_usd: float, spent_usd: float) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0

    def reserve(self, estimate_usd: float) -> bool:
        """Reserve the estimate of the next call; False (nothing reserved) when it would pass the cap."""
        if not self.spent_usd + self.reserved_usd + estimate_usd <= self.budget_usd:  # NaN refuses
            return False
        self.reserved_usd += estimate_usd
        return True

    def settle(self, estimate_usd: float, actual_usd: float) -> None:
        """A call finished: release its reservation and book what it really cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)
        self.spent_usd += actual_usd
