"""The GAN unit test's quality metric over seeds: how far apart runs land, to set its bar.

``tests/unit/test_model_zoo.py::test_the_gan_learns_digits_a_classifier_recognises`` trains the
built-in GAN for 60 epochs in one process and asks a classifier of the real digits how many of
256 samples it puts in one class at >= 0.8. This prints that share for each seed (and for an
untrained generator, 0 epochs), then min / median / max, one JSON line per run:

    PYTHONPATH=. python bench/gan_spread.py [--seeds 10] [--epochs 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from tests.unit.gan_helpers import train_gan_share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for epochs in (0, args.epochs):
        runs = []
        for seed in range(args.seeds):
            start = time.time()
            runs.append(train_gan_share(seed, epochs=epochs, threads=args.threads))
            print(
                json.dumps({"epochs": epochs, "seed": seed, **runs[-1], "s": round(time.time() - start, 1)}),
                flush=True,
            )
        summary: dict[str, object] = {"epochs": epochs, "threads": args.threads}
        for key in ("share", "classes", "top_class"):
            values = [run[key] for run in runs]
            summary[key] = {
                "values": values,
                "min": min(values),
                "median": statistics.median(values),
                "max": max(values),
            }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
