import math
import random

import pytest

from router.policy import ShadowPolicy
from router.shadow import ShadowChooser


@pytest.mark.parametrize(("percent", "seed"), [(1, 1), (10, 2), (50, 3), (97.5, 4)])
def test_shadow_rate_is_within_binomial_error(percent, seed):
    chooser = ShadowChooser(ShadowPolicy(version="v2", percent=percent), random.Random(seed))
    n = 20_000
    hits = sum(1 for _ in range(n) if chooser.choose() == "v2")
    p = percent / 100
    assert abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_zero_and_hundred_percent_are_exact():
    never = ShadowChooser(ShadowPolicy(version="v2", percent=0), random.Random(0))
    always = ShadowChooser(ShadowPolicy(version="v2", percent=100), random.Random(0))
    assert all(never.choose() is None for _ in range(1000))
    assert all(always.choose() == "v2" for _ in range(1000))
