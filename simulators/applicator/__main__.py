"""``python -m simulators.applicator --listen 127.0.0.1:PORT [--seeds N] [--seed RNG_SEED] [faults...]``

Runs the simulated SGP/1 applicator as a TCP server and prints ``LISTENING socket://HOST:PORT`` once it
accepts connections (PORT 0 picks a free port; the real one is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

from .device import SimulatedApplicator
from .faults import Faults
from .server import SimServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m simulators.applicator",
                                description="simulated SGP/1 seed applicator on a TCP port")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on; port 0 = any free")
    p.add_argument("--seeds", type=int, default=60, help="seeds in the cartridge (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the fault generator (default 0)")
    p.add_argument("--realtime", action="store_true", help="take real time for replies, retraction and release")
    g = p.add_argument_group("faults")
    for f in dataclasses.fields(Faults):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            g.add_argument(flag, action="store_true", dest=f.name)
        else:
            g.add_argument(flag, type=float if f.type in ("float", float) else int, default=f.default,
                           dest=f.name)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        faults = Faults(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Faults)})
        server = SimServer(SimulatedApplicator(seeds=args.seeds, rng=args.seed, faults=faults,
                                               realtime=args.realtime), host or "127.0.0.1", int(port))
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"simulators.applicator: cannot start ({exc}); check --listen and the fault options\n")
        return 2
    signal.signal(signal.SIGTERM, lambda *a: server.stop())
    print(f"LISTENING {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    dev = server.device
    sys.stderr.write(f"simulators.applicator: stopped; {len(dev.truth)} seeds released over "
                     f"{server.connections} connections\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
