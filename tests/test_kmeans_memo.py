"""SharedMemo: a remembered k-means result is exactly the one clustering again gives."""

import numpy as np

from compressor.kmeans import share_array
from compressor.kmeans_memo import SharedMemo, narrow_labels


def _weights(seed: int, n: int = 4000, zeros: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=n).astype(np.float32)
    w[rng.random(n) < zeros] = 0.0
    return w.reshape(40, -1)


def _same(a, b) -> None:
    assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
    assert a.values.tobytes() == b.values.tobytes()
    assert np.array_equal(a.labels, b.labels) and a.labels.dtype == b.labels.dtype
    assert a.codebook.tobytes() == b.codebook.tobytes()
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.counts, b.counts)
    assert a.iterations == b.iterations


def test_hit_gives_the_same_result_and_only_for_the_same_values_and_key():
    memo, w = SharedMemo(), _weights(0)
    calls = []

    def make(array, k):
        def run():
            calls.append(k)
            return share_array(array, k, seed=np.random.default_rng(7))

        return run

    first = memo.shared("w", w, (16, "linear", 0), make(w, 16))
    again = memo.shared("w", w.copy(), (16, "linear", 0), make(w, 16))
    _same(first, again)
    _same(first, share_array(w, 16, seed=np.random.default_rng(7)))
    assert calls == [16] and memo.hits == 1
    memo.shared("w", w, (32, "linear", 0), make(w, 32))  # another width: clustered
    other = _weights(1)
    memo.shared("w", other, (32, "linear", 0), make(other, 32))  # other values: clustered
    assert calls == [16, 32, 32] and memo.hits == 1
    # one result per name: the width before is forgotten
    memo.shared("w", other, (16, "linear", 0), make(other, 16))
    assert calls == [16, 32, 32, 16]


def test_all_zero_tensor_and_negative_zeros_come_back_as_they_were():
    memo = SharedMemo()
    w = np.zeros((3, 5), np.float32)
    w[0, 0] = -0.0
    make = lambda: share_array(w, 4)  # noqa: E731
    first = memo.shared("z", w, (4,), make)
    again = memo.shared("z", w, (4,), make)
    _same(first, again)
    assert memo.hits == 1


def test_labels_narrowed_to_the_smallest_integer_type():
    assert narrow_labels(np.array([-1, 0, 127], np.int32)).dtype == np.int8
    assert narrow_labels(np.array([-1, 255], np.int32)).dtype == np.int16


def test_share_rungs_through_a_memo_are_the_models_share_gives_alone():
    from compressor.passes.share import share
    from tests.graphs import conv_net

    model = conv_net()
    memo = SharedMemo()
    for bits_conv, bits_fc in ((4, 4), (4, 5), (6, 5)):
        alone, stats = share(model, bits_conv=bits_conv, bits_fc=bits_fc, min_params=10)
        remembered, stats_memo = share(model, bits_conv=bits_conv, bits_fc=bits_fc, min_params=10, memo=memo)
        assert remembered.SerializeToString() == alone.SerializeToString()
        assert stats_memo == stats
    assert memo.hits >= 2  # conv 4 bits again, then fc 5 bits again
