"""Cross-schedule forecasts against held-out runs: fit on a WSD-S log to update H, forecast four schedules at 2H.

    python benchmarks/forecast_schedules.py /tmp/fc-cross [--fit-until 100 150] [--json out.json]

Reads the per-update CSVs of ``benchmarks/forecast_runs.py`` (one per schedule, seed and peak LR, from the same
initial weights and data order). For every (seed, peak LR): the WSD-S log cut at H is the only thing fitted
(:class:`hf_wsd.forecast_cross.ScheduleForecaster`); it then forecasts the mean training loss of the last
``WINDOW`` updates before 2H of the WSD-S, WSD, cosine and cyclic-cosine runs, which are compared with their logs.
Methods: ``bounded`` (the forecaster: law chosen on held-out decays, capped gain, floor, calibrated band, refusals)
and ``unbounded`` (``fit_law(…, "auto")`` and its covariance band: what ``hf-wsd forecast`` did before).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from hf_wsd import forecast_cross
from hf_wsd.forecast import fit_law
from hf_wsd.forecast_cross import ForecastRefused, ScheduleForecaster
from hf_wsd.forecast_logs import read_csv

WINDOW = 20
SCHEDULES = ("wsd-s", "wsd", "cosine", "cyclic-cosine")
GOALS = {"wsd-s": 0.015, "wsd": 0.025, "cosine": 0.05, "cyclic-cosine": 0.05}
NAME = re.compile(r"(?P<schedule>[a-z-]+)-lr(?P<lr>[0-9.e-]+)-seed(?P<seed>\d+)\.csv")


def runs(folder: Path) -> dict[tuple[str, int], dict[str, Path]]:
    found = defaultdict(dict)
    for path in sorted(folder.glob("*.csv")):
        match = NAME.fullmatch(path.name)
        if match:
            found[(match["lr"], int(match["seed"]))][match["schedule"]] = path
    return {key: value for key, value in found.items() if "wsd-s" in value}


def score(group: dict[str, Path], fit_until: int, horizon: int, gain_factors=(None,)) -> list[dict]:
    log = read_csv(group["wsd-s"]).cut(fit_until)
    started = time.perf_counter()
    forecaster = ScheduleForecaster(log)
    seconds = time.perf_counter() - started
    unbounded = fit_law(log, "auto")
    rows = []
    for schedule in SCHEDULES:
        if schedule not in group:
            continue
        target = read_csv(group[schedule])
        curve = target.main
        if curve.end[-1] < horizon:
            continue
        inside = (curve.end > horizon - WINDOW) & (curve.end <= horizon)
        measured = float(curve.loss[inside].mean())
        lr = curve.lr[:horizon]
        base = {
            "schedule": schedule,
            "fit_until": fit_until,
            "horizon": horizon,
            "measured": measured,
            "fit_seconds": seconds,
            "law": forecaster.law,
            "self_check": forecaster.self_check and forecaster.self_check["error"],
        }
        default, growth = forecast_cross.GAIN_FACTOR, forecast_cross.END_ERROR_GROWTH
        for factor in gain_factors:
            method = "bounded" if factor is None else f"bounded {factor}"
            if isinstance(factor, str):  # "g<exponent>": the end error's growth instead
                forecast_cross.END_ERROR_GROWTH = float(factor[1:])
            else:
                forecast_cross.GAIN_FACTOR = default if factor is None else factor
            try:
                f = forecaster.predict(lr, horizon - WINDOW, horizon, tolerance=GOALS[schedule])
                extra = {}
            except ForecastRefused as error:
                f = forecaster.predict(lr, horizon - WINDOW, horizon, refuse=False)
                extra = {"refused": error.reason}
            finally:
                forecast_cross.GAIN_FACTOR, forecast_cross.END_ERROR_GROWTH = default, growth
            numbers = {"predicted": f.predicted, "low": f.low, "high": f.high, "capped": f.capped}
            rows.append(
                {**base, "method": method, **numbers, "decay_ratio": f.decay_ratio, "spread": f.spread, **extra}
            )
        mean, low, high = unbounded.predict_with_band(lr, horizon - WINDOW, horizon)
        rows.append({**base, "method": "unbounded", "law": unbounded.law, "predicted": mean, "low": low, "high": high})
    for row in rows:
        row["error"] = row["predicted"] / row["measured"] - 1
        row["in_band"] = row["low"] <= row["measured"] <= row["high"]
        row["width"] = (row["high"] - row["low"]) / row["predicted"]
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| fit to | schedule | method | n | refused | mean / max abs err % (answered) | in band | band width % "
        "(median / max) | within goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for row in rows:
        groups[(row["fit_until"], row["schedule"], row["method"])].append(row)
    for (fit_until, schedule, method), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][2], g[0][1])):
        answered = [r for r in group if "refused" not in r]
        errors = [abs(r["error"]) for r in answered]
        widths = [r["width"] for r in answered]
        good = [abs(r["error"]) <= GOALS[schedule] and r["in_band"] and r["width"] <= 0.15 for r in answered]
        lines.append(
            f"| {fit_until} | {schedule} | {method} | {len(group)} | {len(group) - len(answered)} | "
            + (
                f"{100 * np.mean(errors):.2f} / {100 * np.max(errors):.2f} | "
                f"{sum(r['in_band'] for r in answered)}/{len(answered)} | "
                f"{100 * np.median(widths):.1f} / {100 * np.max(widths):.1f} | {sum(good)}/{len(answered)} |"
                if answered
                else "– | – | – | – |"
            )
        )
    return "\n".join(lines)


def per_run(rows: list[dict], method: str = "bounded") -> str:
    """Error (band width) per run and schedule: one line per run; "refused" where the forecaster refused."""
    lines = ["| run (fit to H) | " + " | ".join(SCHEDULES) + " |", "|---|" + "---|" * len(SCHEDULES)]
    cells = defaultdict(dict)
    for row in rows:
        if row["method"] == method:
            mark = "" if row["in_band"] else " **out**"
            text = f"{100 * row['error']:+.2f} % (±{50 * row['width']:.1f} %){mark}"
            cells[f"{row['run']} ({row['fit_until']})"][row["schedule"]] = (
                f"refused ({100 * row['error']:+.1f} %)" if "refused" in row else text
            )
    for run, by_schedule in sorted(cells.items()):
        lines.append(f"| {run} | " + " | ".join(by_schedule.get(s, "–") for s in SCHEDULES) + " |")
    return "\n".join(lines)


def plot(group: dict[str, Path], rows: list[dict], path: Path, title: str) -> Path:
    """The four runs' logged losses (20-update means), the fitted WSD-S part, and each method's forecast with its
    band at 2H."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for index, schedule in enumerate(SCHEDULES):
        curve = read_csv(group[schedule]).main
        window = np.convolve(curve.loss, np.ones(WINDOW) / WINDOW, mode="valid")
        axis.plot(curve.end[WINDOW - 1 :], window, color=f"C{index}", lw=1, label=f"{schedule} (measured)")
        for row in rows:
            if row["schedule"] != schedule or row["method"] not in ("bounded", "unbounded"):
                continue
            x = row["horizon"] + (4 if row["method"] == "bounded" else -4) + 2 * index
            marker = "o" if row["method"] == "bounded" else "x"
            fill = "none" if "refused" in row else f"C{index}"
            axis.errorbar(
                x,
                row["predicted"],
                yerr=[[row["predicted"] - row["low"]], [row["high"] - row["predicted"]]],
                fmt=marker,
                color=f"C{index}",
                mfc=fill,
                capsize=3,
            )
    fit_until = rows[0]["fit_until"]
    axis.axvline(fit_until, color="grey", ls=":", lw=1, label="WSD-S fitted up to here")
    measured = [r["measured"] for r in rows]
    axis.set_ylim(0.85 * min(measured), 1.15 * max(measured))  # unbounded bands reach far outside: clipped here
    axis.set_xlim(fit_until // 2, rows[0]["horizon"] + 20)
    axis.set_xlabel("update")
    axis.set_ylabel(f"training loss ({WINDOW}-update mean)")
    axis.set_title(title + "\no: bounded (hollow: refused), x: unbounded fit_law; bars: 90 % bands", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--fit-until", type=int, nargs="+", help="H values (default: the runs' horizon)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="write the first run's forecasts at H as this PNG")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[],
        help="also score these: a number is a GAIN_FACTOR, g<x> an END_ERROR_GROWTH",
    )
    args = parser.parse_args(argv)
    meta = json.loads((args.folder / "runs.json").read_text())
    horizon = 2 * meta["horizon"]
    rows = []
    for (lr, seed), group in runs(args.folder).items():
        for fit_until in args.fit_until or [meta["horizon"]]:
            for row in score(
                group, fit_until, horizon, [None, *(v if v.startswith("g") else float(v) for v in args.variants)]
            ):
                rows.append({"run": f"lr{lr}-seed{seed}", **row})
                r = rows[-1]
                print(
                    f"{r['run']:<16} H={fit_until} {r['schedule']:<13} {r['method']:<9} {r['law']:<8} "
                    f"pred {r['predicted']:.4f} [{r['low']:.4f}, {r['high']:.4f}] meas {r['measured']:.4f} "
                    f"err {100 * r['error']:+.2f} % {'in' if r['in_band'] else 'OUT'} width {100 * r['width']:.1f} %"
                    + (f" self-check {100 * r['self_check']:+.2f} %" if r.get("self_check") is not None else "")
                    + (f"  REFUSED: {r['refused'].split(': ', 2)[-1][:140]}" if "refused" in r else ""),
                    flush=True,
                )
    print(table(rows))
    print(per_run(rows))
    seconds = [r["fit_seconds"] for r in rows if r["method"] == "bounded" and r["schedule"] == "wsd-s"]
    print(f"forecaster fit: median {np.median(seconds):.1f} s, max {np.max(seconds):.1f} s ({len(seconds)} fits)")
    if args.plot:
        first = rows[0]["run"]
        lr, seed = first[2:].split("-seed")
        chosen = [r for r in rows if r["run"] == first and r["fit_until"] == rows[0]["fit_until"]]
        print(f"figure: {plot(runs(args.folder)[(lr, int(seed))], chosen, args.plot, first)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
