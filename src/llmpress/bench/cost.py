"""Queries per dollar and cost reduction, as the cards define them.

  single-stream:  QPD = 3600 / (latency_s × $/GPU-hour)
  multi-stream:   QPD = QPS × 3600 / $/GPU-hour
  average cost reduction = mean over profiles of QPD_quantized / QPD_base

The cards price GPUs at "on-demand cost at Lambda Labs (observed on 2/18/2025)" without
printing the prices. Their tables imply them: each (latency, QPD) or (QPS, QPD) pair
gives $/h = 3600 / (latency × QPD) or QPS × 3600 / QPD. The pairs below are the base
model's rows of the W4A16 card's "Inference Performance" tables (the model card of
DeepSeek-R1-Distill-Llama-8B-quantized.w4a16, measured with vLLM 0.7.2); `derive_prices`
recomputes every row: the medians are $0.80 (A6000), $1.80 (A100) and $3.29 (H100) per
hour; every row lies within 5% of its median (the spread comes from the cards' rounding
of latency and QPS).
"""
from __future__ import annotations

from statistics import median

# (latency s, QPD) per profile, single-stream; (QPS, QPD) per profile, multi-stream.
CARD_SINGLE = {
    "A6000": [(3.0, 1511), (6.0, 755), (3.0, 1483), (3.1, 1462), (23.6, 191), (24.0, 188), (12.7, 353), (41.1, 110)],
    "A100": [(1.5, 1308), (3.1, 657), (1.6, 1274), (1.6, 1263), (12.1, 166), (12.4, 162), (6.5, 308), (25.6, 78)],
    "H100": [(1.0, 1146), (1.9, 574), (1.0, 1128), (1.0, 1111), (7.6, 144), (7.7, 142), (4.1, 266), (16.3, 67)],
}
CARD_MULTI = {
    "A6000": [(12.6, 56742), (5.7, 25687), (6.5, 29349), (5.2, 23259), (1.6, 7250), (1.2, 5181), (0.8, 3445)],
    "A100": [(24.5, 49296), (11.3, 22657), (13.0, 26047), (10.5, 21020), (3.5, 7029), (2.5, 4995), (1.7, 3503)],
    "H100": [(49.0, 53593), (22.6, 24750), (28.3, 30971), (22.9, 25035), (7.2, 7912), (5.1, 5561), (3.6, 3939)],
}  # the 10240/1536 column (QPS 0.1-0.6) is too coarse to price from and is left out
PRICES_SOURCE = "implied by the cards' QPD columns (Lambda Labs on-demand, observed 2/18/2025)"


def derive_prices() -> dict[str, dict]:
    """$/GPU-hour per GPU from the cards: median of the multi-stream rows, with the spread
    of both tables so a reader can check the consistency."""
    out = {}
    for gpu in CARD_MULTI:
        multi = [qps * 3600 / qpd for qps, qpd in CARD_MULTI[gpu]]
        single = [3600 / (lat * qpd) for lat, qpd in CARD_SINGLE[gpu]]
        out[gpu] = {"usd_per_hour": round(median(multi), 3), "multi_min": min(multi), "multi_max": max(multi),
                    "single_min": min(single), "single_max": max(single)}
    return out


def qpd_single(latency_s: float, usd_per_hour: float) -> float:
    return 3600.0 / (latency_s * usd_per_hour)


def qpd_multi(qps: float, usd_per_hour: float) -> float:
    return qps * 3600.0 / usd_per_hour


def cost_reduction(qpd_model: list[float | None], qpd_base: list[float | None]) -> float | None:
    """Mean over profiles (where both were measured) of QPD_model / QPD_base."""
    pairs = [(m, b) for m, b in zip(qpd_model, qpd_base) if m and b]
    return sum(m / b for m, b in pairs) / len(pairs) if pairs else None
