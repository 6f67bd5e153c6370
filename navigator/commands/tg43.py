"""``navigator tg43 --model M --sk-u S --along CM,... --away CM,...``: a seed's TG-43 dose-rate table.

A commissioning check against the consensus along-away tables: CSV on stdout, first row
``along_cm\\away_cm,<away values>``, then one row per along value, in cGy/h. "Along" is the distance along
the seed axis from the seed centre (cm, signed), "away" the distance from the axis (cm, >= 0).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from navigator.physics import tg43
from navigator.commands._common import number
from navigator.errors import InputError


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help=f"seed model: {', '.join(tg43.known_models())}")
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--sk-u", type=number(0, 25, "U", above=True), dest="sk_u", help="air-kerma strength, U")
    g.add_argument("--activity-mci", type=number(0, 20, "mCi", above=True), dest="activity_mci", help="apparent activity, mCi")
    g.add_argument("--activity-mbq", type=number(0, 740, "MBq", above=True), dest="activity_mbq", help="apparent activity, MBq")
    parser.add_argument("--along", required=True, metavar="CM,...", help="distances along the seed axis, cm, signed (negative first value: --along=-1,0,1)")
    parser.add_argument("--away", required=True, metavar="CM,...", help="distances away from the seed axis, cm (>= 0)")
    parser.add_argument("--formalism", choices=("2D", "1D"), default="2D",
                        help="TG-43U1 2D (line source, F(r,θ); default) or 1D (φ_an) formalism")  # fmt: skip


def _parse_list(text: str, option: str, non_negative: bool) -> list[float]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise InputError(f"{option}: '{item}' is not a number; give distances in cm separated by commas") from None
        if not math.isfinite(v) or (non_negative and v < 0):
            raise InputError(f"{option}: {item} cm is not allowed; give finite distances{' >= 0' if non_negative else ''} in cm")
        values.append(v)
    if not values:
        raise InputError(f"{option}: no distances given; e.g. {option} 0,0.5,1,2")
    return values


def run(args) -> int:
    model = tg43.load_seed_model(args.model)
    sk_u = tg43.sk_u_from(activity_mci=args.activity_mci, activity_mbq=args.activity_mbq, sk_u=args.sk_u)
    along = _parse_list(args.along, "--along", non_negative=False)
    away = _parse_list(args.away, "--away", non_negative=True)
    z, rho = np.meshgrid(np.array(along), np.array(away), indexing="ij")
    rate = tg43.dose_rate_cyl_cgy_h(model, sk_u, z, rho, args.formalism)
    lines = ["along_cm\\away_cm," + ",".join(f"{v:g}" for v in away)]
    for a, row in zip(along, rate):
        lines.append(f"{a:g}," + ",".join(f"{v:.6g}" for v in row))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
