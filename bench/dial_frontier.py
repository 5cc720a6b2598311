"""How far the depth dial's runs sit from the compute-optimal frontier of a fitted law.

    python bench/dial_frontier.py SWEEP_OR_FIT [--depths 2,3,4,5,6] [--tokens-per-param 20]

For each depth: the dial's model at the fit's aspect ratio and context (scaling/shapes.py: dial_shape), trained
for tokens_per_param x N tokens (the dial's budget rule, Chinchilla's 20 by default), costs C = D x its exact
FLOPs per token. The fit's approach-3 law gives its loss L(N, D) and the loss of the compute-optimal shape at the
same C (FittedLaw.optimal, over the fit's own shape family); the gap between them, and the tokens per parameter
at that optimum, say whether the dial's budget rule is near the frontier of this project's own law. Prints;
asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses

from nextoken.model.counting import param_counts, training_flops_per_token
from nextoken.scaling.plan import load_fit
from nextoken.scaling.shapes import dial_shape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("fit", help="a sweep directory or its fit.json (from `nextoken fit`)")
    p.add_argument("--depths", default="2,3,4,5,6,8", help="comma-separated dial depths (default 2,3,4,5,6,8)")
    p.add_argument("--tokens-per-param", type=float, default=20.0, help="the budget rule checked (default 20)")
    p.add_argument("--aspect-ratio", type=int, help="default: the fit's base model's")
    args = p.parse_args()
    law = load_fit(args.fit)
    if law.base is None:
        raise SystemExit(f"{args.fit} has no base model (fit from a points file): give a sweep's fit")
    base = law.base if not args.aspect_ratio else dataclasses.replace(law.base, aspect_ratio=args.aspect_ratio)
    print(f"fit {args.fit}: aspect ratio {base.aspect_ratio}, context {base.block_size}, vocab {base.vocab_size}; "
          f"D = {args.tokens_per_param:g} N")
    print(f"{'depth':>5} {'N':>10} {'D':>12} {'C':>10} {'L(N,D)':>8} {'L_opt(C)':>9} {'gap':>7} {'opt D/N':>8}")
    for depth in map(int, args.depths.split(",")):
        model = dial_shape(depth, base, context=False)
        n = param_counts(model).non_embedding
        d = args.tokens_per_param * n
        c = d * training_flops_per_token(model)
        loss = float(law.loss(n, d))
        n_opt, d_opt = law.optimal(c)
        best = float(law.loss(n_opt, d_opt))
        print(f"{depth:>5} {n:>10,} {d:>12,.0f} {c:>10.3g} {loss:>8.4f} {best:>9.4f} {loss / best - 1:>+7.1%} "
              f"{d_opt / n_opt:>8.1f}")


if __name__ == "__main__":
    main()
