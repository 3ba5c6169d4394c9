"""The long trust runs: many more deliveries and kills than CI's, on SQLite and on a private
PostgreSQL cluster, plus a database outage under load. Each crash scenario runs twice in the
same process, without kills (the baseline) and with them, so the cost of the kills is measured
against this machine's own rate. Prints JSON; exits non-zero if anything acknowledged was lost.

    .venv/bin/python -m bench.trust [--jobs 1500] [--kills 15] [--skip-outage]

The shared PostgreSQL on 5432 is never touched: PostgreSQL runs in a throw-away cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests import pgcluster
from tests.conftest import write_config
from tests.loadgen import crash_run, outage_run


def _ok(figures: dict[str, Any]) -> bool:
    return figures["lost"] == 0 and figures["duplicated"] == 0 and figures["fold_mismatches"] == 0 and "500" not in figures["statuses"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1500, help="jobs per run (about 3 deliveries each)")
    parser.add_argument("--kills", type=int, default=15, help="worker SIGKILLs per crash run")
    parser.add_argument("--skip-outage", action="store_true")
    args = parser.parse_args(argv)

    from gateway.migrate import upgrade

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gw-trust-") as tmp, pgcluster.PgCluster.create() as pg:
        cfg = write_config(Path(tmp) / "gateway.toml")
        for backend in ("sqlite", "postgres"):
            for label, kills in (("baseline", 0), ("sigkill", args.kills)):
                if backend == "sqlite":
                    db = f"sqlite:///{tmp}/{label}.db"
                    upgrade(db)
                else:
                    db = pg.database(f"trust_{label}")
                run = crash_run(db, cfg, jobs=args.jobs, kills=kills, budget=600)
                results[f"crash_{backend}_{label}"] = run.figures()
                print(json.dumps({f"crash_{backend}_{label}": run.figures()}), file=sys.stderr)
        if not args.skip_outage:
            run = outage_run(pg, cfg, jobs=args.jobs // 2)
            results["outage_postgres"] = run.figures()
    crash = [v for k, v in results.items()]
    results["summary"] = {
        "sent": sum(v["sent"] for v in crash), "acknowledged": sum(v["acknowledged"] for v in crash),
        "stored": sum(v["stored"] for v in crash), "lost": sum(v["lost"] for v in crash),
        "statuses_500": sum(v["statuses"].get("500", 0) for v in crash), "all_ok": all(_ok(v) for v in crash),
    }
    print(json.dumps(results, indent=2))
    return 0 if results["summary"]["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
