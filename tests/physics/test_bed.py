"""BED: Dale's permanent-implant formula and the external-beam LQ formula against values worked by hand."""

from __future__ import annotations

import pytest

from navigator.physics import bed
from navigator.errors import InputError


def test_permanent_implant_bed_by_hand():
    # 145 Gy of I-125: λ = 0.693147 / (59.4 d · 24 h/d) = 4.86214e-4 /h, R0 = 145 · λ = 0.0705010 Gy/h,
    # μ = 0.693147 / 1.5 h = 0.462098 /h, μ + λ = 0.462584 /h.
    # α/β = 10 Gy: BED = 145 · (1 + 0.0705010 / (0.462584 · 10)) = 145 · 1.0152406 = 147.2099 Gy
    # α/β = 3 Gy:  BED = 145 · (1 + 0.0705010 / (0.462584 · 3))  = 145 · 1.0508020 = 152.3663 Gy
    assert bed.ldr_permanent_bed_gy(145.0) == pytest.approx(147.2099, abs=1e-3)
    assert bed.ldr_permanent_bed_gy(145.0, alpha_beta_gy=3.0) == pytest.approx(152.3663, abs=1e-3)
    assert bed.ldr_permanent_bed_gy(0.0) == 0.0


def test_ebrt_bed_and_sum():
    assert bed.ebrt_bed_gy(30, 2.0) == pytest.approx(72.0)  # 60 Gy · (1 + 2/10)
    assert bed.ebrt_bed_gy(25, 2.0, alpha_beta_gy=3.0) == pytest.approx(50.0 * (1 + 2 / 3))
    total = bed.total_bed_gy(bed.ebrt_bed_gy(30, 2.0), bed.ldr_permanent_bed_gy(145.0))
    assert total == pytest.approx(72.0 + 147.2099, abs=1e-3)
    assert bed.eqd2_gy(72.0) == pytest.approx(60.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: bed.ldr_permanent_bed_gy(-1.0),
        lambda: bed.ldr_permanent_bed_gy(100.0, alpha_beta_gy=0.0),
        lambda: bed.ldr_permanent_bed_gy(100.0, repair_half_time_h=float("nan")),
        lambda: bed.ebrt_bed_gy(2.5, 2.0),
        lambda: bed.ebrt_bed_gy(10, -2.0),
    ],
)
def test_bad_input(call):
    with pytest.raises(InputError):
        call()
