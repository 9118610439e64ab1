"""K-fold assignment stratified on each image's class combination, balanced per class, deterministic for a seed."""

from collections import defaultdict

import numpy as np

from steel_tpu.constants import CLASS_IDS

_RESTARTS = 8


def combination(classes):
    """The stratum of an image: 'clean', or its present class ids joined by '+' (e.g. '1+3')."""
    return "+".join(str(c) for c in sorted(classes)) or "clean"


def assign_folds(classes_by_id, *, k, seed):
    """A fold in 0..k-1 for every image id of `classes_by_id` (id -> present class ids).

    Each combination is dealt round-robin in full rounds of k, which loads every fold equally; only the
    fewer-than-k leftovers of each combination decide the balance, and they are placed so that the image count,
    every class's count and every combination's count per fold are within 1 of the ideal share wherever the
    data allows. Ids are sorted first, so the CSV row order does not change the result.
    """
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    if len(classes_by_id) < k:
        raise ValueError(f"{len(classes_by_id)} images cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for image_id in sorted(classes_by_id):
        groups[combination(classes_by_id[image_id])].append(image_id)
    fold_of = {}
    leftover_ids, leftover_combos = [], []
    for combo in sorted(groups):
        ids = [groups[combo][i] for i in rng.permutation(len(groups[combo]))]
        full = len(ids) // k * k
        fold_of.update((image_id, i % k) for i, image_id in enumerate(ids[:full]))
        leftover_ids += ids[full:]
        leftover_combos += [combo] * (len(ids) - full)
    if leftover_ids:
        folds = _balance(_incidence(leftover_combos), k=k, rng=rng)
        fold_of.update(zip(leftover_ids, folds.tolist()))
    return fold_of


def _incidence(combos):
    """Rows: leftover images; columns: the image count, each class, then each combination (0/1)."""
    names = sorted(set(combos))
    rows = np.zeros((len(combos), 1 + len(CLASS_IDS) + len(names)), dtype=np.int64)
    rows[:, 0] = 1
    for i, combo in enumerate(combos):
        for c in combo.split("+") if combo != "clean" else ():
            rows[i, CLASS_IDS.index(int(c)) + 1] = 1
        rows[i, 1 + len(CLASS_IDS) + names.index(combo)] = 1
    return rows


def _cost(loads):
    # Lexicographic: first the image and class counts must be within 1 across folds (the promise), then the
    # combinations (the stratification), then the sum of squares pulls everything towards the mean.
    spread = np.maximum(loads.max(axis=-2) - loads.min(axis=-2) - 1, 0)
    main = 1 + len(CLASS_IDS)
    return spread[..., :main].sum(-1), spread[..., main:].sum(-1), (loads**2).sum((-2, -1))


def _balance(rows, *, k, rng):
    """Folds for the leftover rows: the best of a few seeded restarts of greedy placement + local search."""
    best = None
    # Restarts with other tie-break orders escape the occasional local optimum of the move/swap search.
    for _ in range(_RESTARTS):
        folds, loads = _greedy(rows, k=k, rng=rng)
        folds = _improve(rows, folds, loads, k=k)
        cost = _cost(_loads(rows, folds, k=k))
        if best is None or cost < best[0]:
            best = cost, folds
        if cost[0] == 0 and cost[1] == 0:
            break
    return best[1]


def _loads(rows, folds, *, k):
    loads = np.zeros((k, rows.shape[1]), dtype=np.int64)
    np.add.at(loads, folds, rows)
    return loads


def _greedy(rows, *, k, rng):
    folds = np.empty(len(rows), dtype=np.int64)
    loads = np.zeros((k, rows.shape[1]), dtype=np.int64)
    # Most-constrained first: rows with the most classes, so clean images only even out the totals at the end.
    for i in np.argsort(-rows[:, 1 : 1 + len(CLASS_IDS)].sum(1), kind="stable"):
        candidates = loads + rows[i]  # one candidate load table per fold: row i placed there
        trial = np.broadcast_to(loads, (k, *loads.shape)).copy()
        trial[np.arange(k), np.arange(k)] = candidates
        keys = list(zip(*_cost(trial), rng.permutation(k)))  # the seeded permutation breaks ties
        folds[i] = min(range(k), key=keys.__getitem__)
        loads[folds[i]] += rows[i]
    return folds, loads


def _improve(rows, folds, loads, *, k):
    for _ in range(100):  # each accepted step lowers the cost, so this ends; the cap bounds pathological inputs
        best = _cost(loads)
        if best[0] == 0 and best[1] == 0:
            break
        step = _best_step(rows, folds, loads, k=k, best=best)
        if step is None:
            break
        for i, fold in step:
            loads[folds[i]] -= rows[i]
            loads[fold] += rows[i]
            folds[i] = fold
    return folds


def _best_step(rows, folds, loads, *, k, best):
    """The first single move or pairwise swap that lowers the cost, as [(row, new fold), ...]; None if none."""
    n = len(rows)
    for i in range(n):
        for fold in range(k):
            if fold != folds[i] and _cost(_moved(loads, rows, [(i, folds[i], fold)])) < best:
                return [(i, fold)]
        for j in range(i + 1, n):
            if folds[j] != folds[i] and (rows[i] != rows[j]).any():
                moves = [(i, folds[i], folds[j]), (j, folds[j], folds[i])]
                if _cost(_moved(loads, rows, moves)) < best:
                    return [(i, folds[j]), (j, folds[i])]
    return None


def _moved(loads, rows, moves):
    loads = loads.copy()
    for i, old, new in moves:
        loads[old] -= rows[i]
        loads[new] += rows[i]
    return loads
