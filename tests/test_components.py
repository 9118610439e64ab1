"""Component filtering against a brute-force BFS labelling; post-processing order; the per-size counts tune uses."""

import collections

import numpy as np
import pytest

from steel_tpu import components, postprocess


def _bfs_components(mask):
    """[(pixels as a set of (r, c))] of one bool [H, W] mask, 8-connected, by breadth-first search."""
    seen, found = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, pixels = True, collections.deque([start]), set()
        while queue:
            r, c = queue.popleft()
            pixels.add((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        queue.append((nr, nc))
        found.append(pixels)
    return found


def _brute_remove_small(masks, min_size):
    out = np.zeros_like(masks)
    for n in range(masks.shape[0]):
        for c in range(masks.shape[-1]):
            for pixels in _bfs_components(masks[n, ..., c]):
                if len(pixels) >= min_size[c]:
                    for rc in pixels:
                        out[(n, *rc, c)] = True
    return out


@pytest.mark.parametrize("seed", range(4))
def test_remove_small_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 24, 40, 4)) < rng.uniform(0.2, 0.55)  # near percolation: many sizes, diagonal links
    min_size = [0, 2, 5, 30]
    np.testing.assert_array_equal(components.remove_small(masks, min_size), _brute_remove_small(masks, min_size))
    # Components never join across images: the same image alone gives the same answer.
    np.testing.assert_array_equal(components.remove_small(masks[1:2], min_size),
                                  _brute_remove_small(masks[1:2], min_size))


def test_counts_by_size_match_filtered_masks():
    rng = np.random.default_rng(9)
    mask, truth = rng.random((5, 20, 30)) < 0.4, rng.random((5, 20, 30)) < 0.5
    grid = (0, 1, 3, 8, 50)
    pred, inter = components.counts_by_size(mask, truth, grid)
    for k, s in enumerate(grid):
        kept = _brute_remove_small(mask[..., None], [s])[..., 0]
        np.testing.assert_array_equal(pred[:, k], kept.sum(axis=(1, 2)))
        np.testing.assert_array_equal(inter[:, k], (kept & truth).sum(axis=(1, 2)))


def test_post_process_filters_components_before_areas():
    masks = np.zeros((1, 16, 16, 4), bool)
    masks[0, 0:2, 0:2, 1] = True  # 4 px
    masks[0, 5:15, 5:15, 1] = True  # 100 px
    masks[0, 0:3, 0:3, 2] = True  # 9 px
    pp = postprocess.PostProcess(min_component=(0, 10, 0, 0), min_area=(0, 101, 0, 0))
    filtered, areas = pp.filter(masks)
    assert areas.tolist() == [[0, 100, 9, 0]]
    assert pp.keep(areas).tolist() == [[True, False, True, True]]  # 100 < 101 once the speck is gone
    # At scale 2 every pixel stands for 4: a 10 px full-resolution minimum is 3 pixels here.
    filtered, areas = pp.filter(masks, scale=2)
    assert areas.tolist() == [[0, 416, 36, 0]]
    assert postprocess.PostProcess.from_dict({"pixel_threshold": [0.5] * 4, "min_area": [0] * 4}).min_component == (
        0, 0, 0, 0)
    with pytest.raises(ValueError, match="min_component"):
        postprocess.PostProcess(min_component=(0, -1, 0, 0))
