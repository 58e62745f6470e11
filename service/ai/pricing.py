"""What a model call costs: a price table in USD per million tokens, looked up by model name.

The defaults are Anthropic's list prices for the models aijobs is likely to be pointed at, as
published in November 2026; AIJOBS_CLAUDE_PRICES overrides or extends them (docs/claude.md).
Costs are estimates: they do not know of discounts, batch pricing or data-residency surcharges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from service.ai.analyzer import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind. cache_write is the five-minute cache's price."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    @classmethod
    def of(cls, input: str, output: str, cache_write: str, cache_read: str) -> Price:
        return cls(Decimal(input), Decimal(output), Decimal(cache_write), Decimal(cache_read))

    def cost(self, usage: Usage) -> Decimal:
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_input_tokens * self.cache_write
            + usage.cache_read_input_tokens * self.cache_read
        ) / MILLION


# Keys are model names or prefixes of them; the longest that matches wins, so a family's
# entry prices the models of that family the table does not name.
DEFAULT_PRICES: Mapping[str, Price] = {
    "claude-sonnet-5-5": Price.of("2", "10", "2.50", "0.10"),
    "claude-sonnet-5": Price.of("2", "10", "2.50", "0.20"),
    "claude-sonnet": Price.of("3", "15", "3.75", "0.30"),
    "claude-opus-5-5": Price.of("4", "20", "5", "0.20"),
    "claude-opus": Price.of("5", "25", "6.25", "0.50"),
    "claude-haiku-5-5": Price.of("0.10", "0.50", "0.125", "0.01"),
    "claude-haiku": Price.of("1", "5", "1.25", "0.10"),
}


class PriceTable:
    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._prices: dict[str, Price] = dict(DEFAULT_PRICES)
        for model, price in (overrides or {}).items():
            # Through str: 0.1 as a float is not 0.1, and costs should add up to the cent.
            self._prices[model] = Price(
                *(Decimal(str(price[k])) for k in ("input", "output", "cache_write", "cache_read"))
            )

    def price_of(self, model: str) -> Price | None:
        """The price of `model`: its own entry, else the longest prefix of its name listed."""
        best = max((key for key in self._prices if model.startswith(key)), key=len, default=None)
        return self._prices[best] if best is not None else None

    def cost(self, model: str, usage: Usage) -> Decimal | None:
        """USD for `usage` of `model`; None when the table has no price for it."""
        price = self.price_of(model)
        return price.cost(usage) if price is not None else None
