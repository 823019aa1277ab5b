"""The share stage: k-means weight sharing.  Its ladder starts with the per-tensor width search
(search.share_budget), weighed by packed size against the first uniform rung that fits; then
uniform widths, fewest bits first, up to the recipe's and more fc bits.  With ``method`` "auto"
(the default) or "uniform", the per-tensor search is search.ecq_budget's instead: k-means
widths and uniform grids (ECUQ) per tensor, by estimated packed bytes."""

from __future__ import annotations

import math
from dataclasses import replace

from ..graph import Weight
from ..kmeans_memo import SharedMemo
from ..options import ShareOptions
from ..passes.compensate import one_blas_thread
from ..passes.share import CONV_ROLES, share, shareable_weights
from ..search.ecq_budget import share_by_rate
from ..search.share_budget import MAX_SEARCH_RUNS, share_to_budget
from .fine_share import fine_attempts
from .gentlest_first import GentlestFirst, either_skip, floor_miss_db, verdict_probe
from .kmeans_reach import SearchSizes
from .ladder import MIN_SEARCH_SAMPLES, Attempt, Ladder, StageContext, StageResult, run_ladder
from .partial_share import LastBuilt, partial_attempts
from .share_backoff import KeptSearch, backoff_attempts

NAME = "share"

# Longest the per-tensor bit search's whole-model runs may take, in nominal seconds (the judge's
# eval_cost x the runs it makes, counted, never the clock); past it they run on a subset.
SHARE_SEARCH_SECONDS = 60.0
# The search spends what it is given, and quantize's noise compounds with narrow codebooks:
# it may take the total loss to this share of the budget.
SHARE_SEARCH_BUDGET_SHARE = 0.7
# With labels the budget is top-1 accuracy, which quantize's noise (uniform grids are exact int8)
# seldom moves: the search may take the loss further, and quantize's ladder backs off to
# weight-only when it does not fit (see benchmarks/README.md, "Rate: the share search's budget").
SHARE_SEARCH_BUDGET_SHARE_LABELED = 0.9
# Fidelity runs (class scores, embeddings, maps, positions without labels): quantize seldom packs
# smaller than a searched share there and, when it is kept, gains a few percent; the reserve
# it left went unused while the search stopped short.  The search may take the loss as far as
# with labels, and backs off along its own fronts when the verdict disagrees (share_backoff.py;
# benchmarks/README.md, "The share search's budget in fidelity runs").
SHARE_SEARCH_BUDGET_SHARE_FIDELITY = 0.9
# The ladder's rungs below the recipe's bits (conv, fc), tried first so that the smallest that
# fits wins, and the part of the budget they may use, so that quantize keeps room.
LOW_BITS_RUNGS = ((4, 4), (4, 5), (6, 5))
LOW_BITS_BUDGET_SHARE = 0.8
# A k-means rung is not measured when a measured rung missed the SNR floor by more than its
# extra bits can buy: k-means' error falls by about 6 dB per bit (the high-rate rate of any
# scalar quantizer; less at low rates), plus a slack for outputs that do not follow the weights.
KMEANS_DB_PER_BIT = 6.02
SKIP_SLACK_DB = 3.0
# The per-tensor search takes the layers' input covariances prune captured even when pruning
# changed weights upstream (search/layer_inputs.py; benchmarks/README.md, "Run speed").
REUSE_PRUNED_INPUTS = False


def run(opts: ShareOptions, ctx: StageContext) -> StageResult:
    model, measure = ctx.model, ctx.measure
    adaptive = opts.adaptive
    bc, bf = opts.bits_conv, opts.bits_fc
    # Bias correction (recipe share.bias_correction, off by default): the mean output shift
    # sharing causes, taken back through each layer's bias; it seldom pays in the default ladder.
    bias_data = ctx.calib_data if opts.bias_correction else None
    judge = _bias_judge(ctx) if measure.data is not None else None
    ladder = [(bc, bf, None)]
    shareable = shareable_weights(model, opts.exclude, opts.min_params)
    has_conv = any(w.role in CONV_ROLES for w in shareable)
    has_fc = any(w.role not in CONV_ROLES for w in shareable)
    if adaptive:
        # Fewer bits first, each held to a part of the budget so that quantize keeps room; then
        # the recipe's bits (the Deep Compression setting) and more FC bits with the whole budget.
        low = [(min(bc, c), min(bf, f)) for c, f in LOW_BITS_RUNGS]
        low = [(c if has_conv else bc, f if has_fc else bf) for c, f in low]
        reserve = measure.budget * LOW_BITS_BUDGET_SHARE
        ladder = [(c, f, reserve) for c, f in low if (c, f) != (bc, bf)] + ladder
        ladder += [(max(bc, 8), b, None) for b in range(bf + 1, 9)]
    seen, attempts = set(), []
    # The rungs repeat one kind's width while changing the other's, and the search makes some
    # of the same candidates: each tensor's last clustering is kept for the next (same result).
    memo = SharedMemo()
    rungs: dict[str, tuple] = {}  # k-means rung labels -> (bits conv, bits fc)
    compare = False
    sizes = None  # the search's estimates, for the k-means rungs that could not be kept (kmeans_reach.py)
    if adaptive and measure.data is not None and not opts.refit:
        kept_search = KeptSearch()
        search = per_tensor_attempt(shareable, opts, ctx, bias_data, judge, memo, kept_search.keep)
        if search is not None:
            # The searched widths against the first uniform rung that fits: measurement noise
            # can make either the smaller one.
            sizes = SearchSizes(search.label)
            attempts.append(replace(search, build=sizes.wrap(search.build)))
            compare = True
            if opts.method != "kmeans":  # the verdict rejects the search's: its fronts, gentler
                attempts += backoff_attempts(kept_search, search.label, search.budget)
                compare = len(attempts)
    refit = ctx.calib_data if opts.refit else None
    for bits_conv, bits_fc, budget in ladder:
        # A width for a kind of weight the model lacks changes nothing: the same candidate.
        key = (bits_conv if has_conv else None, bits_fc if has_fc else None)
        if key in seen:
            continue
        seen.add(key)
        kinds = [f"{bits_conv} bits conv"] * has_conv + [f"{bits_fc} bits fc"] * has_fc
        label = f"k-means {' / '.join(kinds or [f'{bits_conv} bits conv', f'{bits_fc} bits fc'])}"
        rungs[label] = key
        attempts.append(
            Attempt(
                label,
                lambda bits_conv=bits_conv, bits_fc=bits_fc: share(
                    model,
                    bits_conv=bits_conv,
                    bits_fc=bits_fc,
                    init=opts.init,
                    seed=opts.seed,
                    exclude=opts.exclude,
                    min_params=opts.min_params,
                    refit_data=refit,
                    bias_data=bias_data,
                    bias_judge=judge,
                    memo=memo,
                ),
                budget,
                skip=either_skip(
                    either_skip(
                        sizes.out_of_reach(key) if sizes is not None else None,
                        sizes.predicted_miss(key, measure.budget if budget is None else budget)
                        if sizes is not None and measure.mode == "fidelity"
                        else None,
                    ),
                    (lambda tried, key=key: beyond_reach(tried, rungs, key, measure)) if adaptive else None,
                ),
            )
        )
    if adaptive and measure.data is not None and len(rungs) > 1:
        attempts = gentlest_first(attempts, rungs, ctx, sizes)
    if adaptive and measure.data is not None:
        # Every setting missed: the last one built (the gentlest measured) on the tensors that
        # fit, the rest unshared (stages/partial_share.py).
        last = LastBuilt()
        attempts = tracked(attempts, last)
        spent = max(measure.loss(ctx.previous.metrics) or 0.0, 0.0)
        points = max(measure.budget * share_search_budget_share(measure.mode) - spent, 0.0)
        # Weights only a subgraph reads (quantize leaves them float): finer uniform grids first.
        reserve = measure.budget * share_search_budget_share(measure.mode)
        attempts += fine_attempts(shareable, ctx, last, opts.init, opts.seed, reserve)
        attempts += partial_attempts(shareable, ctx, last, points)
    result = run_ladder(Ladder(NAME, attempts, adaptive, compare_first=compare), ctx)
    if ctx.layer_inputs is not None:
        ctx.layer_inputs.release()  # no later stage reads covariances: their memory goes now
    return result


def tracked(attempts: list[Attempt], last: LastBuilt) -> list[Attempt]:
    """`attempts` whose builds `last` records; each keeps the rest of its fields (an early
    verdict, gentlest_first's `measured`, stays its verdict: no second run)."""
    return [replace(a, build=last.wrap(a.label, a.build)) for a in attempts]


def gentlest_first(
    attempts: list[Attempt], rungs: dict[str, tuple], ctx: StageContext, sizes: SearchSizes | None = None
) -> list[Attempt]:
    """The k-means rungs with the gentlest (most bits on every kind, the ladder's last) measured
    early once one of them missed (stages/gentlest_first.py): fewer bits are never more exact,
    so when it misses the floor by more than SKIP_SLACK_DB, the harsher rungs are not built.
    Not when the gentlest could not be kept anyway (`sizes`: stages/kmeans_reach.py)."""
    labels = list(rungs)
    gentlest = labels[-1]
    top = rungs[gentlest]
    if any(b is not None and t is not None and b > t for key in rungs.values() for b, t in zip(key, top)):
        return attempts  # not a chain: some rung has more bits on a kind than the last
    index = next(i for i, a in enumerate(attempts) if a.label == gentlest)
    # Judged on a few verdict samples first: when it fits there, no rung is skipped, and the full
    # early verdict would be spent for nothing whenever a middle rung fits.
    early = GentlestFirst(
        ctx,
        gentlest,
        attempts[index].build,
        labels,
        lambda m: floor_miss_db(m, ctx.measure),
        SKIP_SLACK_DB,
        probe=verdict_probe(ctx),
    )
    out = []
    for a in attempts:
        if a.label == gentlest:
            a = replace(a, build=early.build, measured=early.metrics)
        elif a.label in rungs:
            rule = early.skip(a.label)
            if sizes is not None:
                rule = _unless(sizes.out_of_reach(top), rule)
            a = replace(a, skip=either_skip(a.skip, rule))  # the free bound first
        out.append(a)
    return out


def _unless(kept_out, rule):
    """`rule`, not applied (no early verdict) when `kept_out` gives a reason."""

    def unless(tried):
        return None if kept_out(tried) else rule(tried)

    return unless


def beyond_reach(tried: list[dict], rungs: dict[str, tuple], key: tuple, measure) -> str | None:
    """Why the k-means rung `key` (bits conv, bits fc; None for a kind the model lacks) cannot
    fit, from the rungs measured already (`tried`, labels in `rungs`): one that missed the SNR
    floor, or the KL limit of class scores (KL grows as the noise power for small noise), by
    more dB than the extra bits buy (KMEANS_DB_PER_BIT each, the most any kind gains, plus
    SKIP_SLACK_DB).  Either miss alone rejects a rung, whatever its loss in points.  None: it
    may fit, measure it."""
    for t in tried:
        before = rungs.get(t["option"])
        if before is None:
            continue
        need = floor_miss_db(t, measure)
        if need is None:
            continue
        extra = max(max((b - a for a, b in zip(before, key) if a is not None and b is not None), default=0), 0)
        if need > KMEANS_DB_PER_BIT * extra + SKIP_SLACK_DB:
            return f"not measured: {t['option']} missed by {need:.1f} dB, more than {extra} more bits can buy"
    return None


def _bias_judge(ctx: StageContext):
    """Scores a bias-corrected candidate on the budget's own measure: the calibration set alone
    is too small to tell whether a correction helps."""
    measure = ctx.measure

    def score(candidate):
        metrics, _ = measure(candidate)
        loss = measure.loss(metrics)
        snr = metrics.get("snr_db")
        return (-(loss if loss is not None else 0.0), snr if snr is not None and math.isfinite(snr) else math.inf)

    return score


def per_tensor_attempt(
    tensors: list[Weight],
    opts: ShareOptions,
    ctx: StageContext,
    bias_data=None,
    bias_judge=None,
    memo: SharedMemo | None = None,
    keep_search=None,
) -> Attempt | None:
    """The attempt that chooses bits per tensor (share_budget), or None when the model is too
    slow to search.  The search makes one capture run over the calibration data (the layers'
    input covariances), clusters every tensor at every width without running the model, and
    measures at most MAX_SEARCH_RUNS allocations on the data: when those runs' nominal cost
    passes SHARE_SEARCH_SECONDS they run on an evenly spread subset (at least
    MIN_SEARCH_SAMPLES samples; the ladder then measures the result on all the data)."""
    if not tensors:
        return None
    model, measure, log = ctx.model, ctx.measure, ctx.log
    data = measure.search_data  # the judge's verdict is on measure.data, maybe held out
    calib = ctx.calib_data if ctx.calib_data is not None else data
    per_sample = measure.eval_cost / max(data.size, 1)
    estimate = MAX_SEARCH_RUNS * per_sample * data.size
    reference, where = (ctx.outputs if data is measure.data else None), ""
    if estimate > SHARE_SEARCH_SECONDS:
        samples = int(SHARE_SEARCH_SECONDS / max(MAX_SEARCH_RUNS * per_sample, 1e-12))
        if samples < MIN_SEARCH_SAMPLES:
            log(f"share: per-tensor bit search skipped (estimated {estimate:.0f} nominal s > {SHARE_SEARCH_SECONDS:g})")
            return None
        data = data.spread(samples)
        reference, where = None, f" on {samples} of {measure.search_data.size} samples"
    reserve = measure.budget * share_search_budget_share(measure.mode)
    spent = measure.loss(ctx.previous.metrics) or 0.0
    points = max(reserve - max(spent, 0.0), 0.0)
    step = getattr(log, "step", None)
    progress = (lambda done, total: step("share: layer errors", done, total)) if step else None
    snr = None
    if measure.snr_gated:
        # Noise powers add up: what the search may add on top of what the earlier stages
        # spent, within the same share of the noise allowance as of the points.
        allowed = SHARE_SEARCH_BUDGET_SHARE * 10 ** (-measure.min_snr_db / 10)
        spent_snr = ctx.previous.metrics.get("snr_db")
        if spent_snr is not None and math.isfinite(spent_snr):
            allowed -= 10 ** (-spent_snr / 10)
        if allowed <= 0:
            log("share: per-tensor bit search skipped (the earlier stages spent the SNR allowance)")
            return None
        snr = -10 * math.log10(allowed)

    by_rate = opts.method != "kmeans"
    # k-means alone: the ladder's default widths are measured first and the search starts from them when they fit.
    seeds = [{w.name: opts.bits_conv if w.role in CONV_ROLES else opts.bits_fc for w in tensors}]
    extra = {"method": opts.method, "rd_factor": opts.rd_factor, "memo": memo} if by_rate else {"seeds": seeds}
    if by_rate and keep_search is not None:
        extra["keep_search"] = keep_search
    extra["gain_runs"] = opts.gain_runs
    if ctx.layer_inputs is not None and reference is None:
        # The same model's outputs on the same samples, when prune's search ran them (it left the model as it was).
        reference = ctx.layer_inputs.take_reference(model, data)
    if ctx.layer_inputs is not None:
        # The covariances prune captured: exact when it left the weights as they were, else
        # (REUSE_PRUNED_INPUTS) the pre-prune ones, which only rank the measured candidates.
        extra["captured_layers"] = ctx.layer_inputs.layers(model, calib, approximate=REUSE_PRUNED_INPUTS)
        if not extra["captured_layers"]:
            # Captured on another model (pruning changed the weights): no use to this search,
            # and on a large model gigabytes; freed before it captures its own (stages run
            # again on the captured model capture again).
            ctx.layer_inputs.release()
        # The search's layers, kept for the partial rungs' ranking (the same model and data):
        # one capture run for the stage, not two.
        extra["keep_layers"] = lambda layers: ctx.layer_inputs.keep(model, calib, layers)

    def searched():
        # Covariances, curves and rounding: many tall-skinny products, on one BLAS thread (as
        # prune's search: two threads wait at OpenBLAS's barriers on a busy machine).
        with one_blas_thread():
            return _searched()

    def _searched():
        shared, stats = (share_by_rate if by_rate else share_to_budget)(
            model,
            data,
            points,
            min_snr_db=snr,
            init=opts.init,
            seed=opts.seed,
            exclude=opts.exclude,
            min_params=opts.min_params,
            progress=progress,
            reference_outputs=reference,
            bias_data=bias_data,
            bias_judge=bias_judge,
            calib=calib,
            **extra,
        )
        stats["search_plan"] = search_summary(stats["budget_search"])
        return shared, stats

    what = {"kmeans": "k-means bits", "uniform": "uniform steps", "auto": "k-means bits or uniform steps"}[opts.method]
    return Attempt(f"{what} per tensor, searched within {points:.2g} points{where}", searched, reserve)


def share_search_budget_share(mode: str) -> float:
    """The share of the budget the per-tensor search may take the total loss to, by the judge's mode."""
    if mode == "fidelity":
        return SHARE_SEARCH_BUDGET_SHARE_FIDELITY
    return SHARE_SEARCH_BUDGET_SHARE_LABELED if mode == "accuracy" else SHARE_SEARCH_BUDGET_SHARE


def search_summary(search: dict) -> str:
    """What the bit search measured, for the report: the curves' kind and the whole-model runs."""
    methods = list(search["methods"].values())
    by_covariance = methods.count("covariance")
    by_rows = methods.count("rows")
    tables = f", {by_rows} Gather table(s) by the looked-up rows" if by_rows else ""
    others = ", the others by weight error" if by_covariance + by_rows < len(methods) else ""
    uniform = f", {search['uniform_runs']} uniform grids" if "uniform_runs" in search else ""
    return (
        f"{by_covariance} of {len(methods)} tensors by layer output error{tables}{others}; "
        f"{search['capture_runs']} capture run(s), {search['kmeans_runs']} k-means{uniform}, "
        f"{search['whole_model_runs']} whole-model runs for the candidates"
    )
