"""The sentence-encoder helpers of benchmarks/real.py (minilm): WordPiece tokenizer, graph rewrites,
paraphrase sentences and the embedding task scores.  Small vocabularies and graphs: no downloads."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real  # noqa: E402

VOCAB = {
    t: i
    for i, t in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "hello", ",", "world", "!", "日", "a", "##a"]
    )
}


def test_basic_tokens_lowercases_strips_accents_and_splits_punctuation_and_cjk():
    assert real.basic_tokens("Héllo,  WORLD!\t日本") == ["hello", ",", "world", "!", "日", "本"]
    assert real.basic_tokens("it's 3.14\u200b") == ["it", "'", "s", "3", ".", "14"]


def test_wordpiece_greedy_longest_match():
    assert real.wordpiece("unaffable", VOCAB) == ["un", "##aff", "##able"]
    assert real.wordpiece("aaa", VOCAB) == ["a", "##a", "##a"]
    assert real.wordpiece("unx", VOCAB) == ["[UNK]"]  # no full cover: the whole word is unknown
    assert real.wordpiece("a" * 101, VOCAB) == ["[UNK]"]


def test_encode_adds_cls_sep_pads_and_truncates():
    ids, mask = real.encode(["Hello, world!", "unaffable " * 10], VOCAB, length=8)
    assert ids.dtype == mask.dtype == np.int64
    assert ids[0].tolist() == [2, 7, 8, 9, 10, 3, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert ids[1].tolist() == [2, 4, 5, 6, 4, 5, 6, 3]  # truncated to 6 pieces between [CLS] and [SEP]
    assert mask[1].all()


def _two_output_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["ids"], ["ids_echo"]),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["dead"]),
        helper.make_node("Add", ["h", "b"], ["emb"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 2]),
        ],
        [
            helper.make_tensor_value_info("ids_echo", TensorProto.INT64, ["n", 2]),
            helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 4]),
        ],
        [
            numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) - 5, "w"),
            numpy_helper.from_array(np.ones(4, dtype=np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_keep_outputs_drops_other_outputs_and_unneeded_nodes():
    model = real.keep_outputs(_two_output_model(), ["emb"])
    assert [o.name for o in model.graph.output] == ["emb"]
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    onnx.checker.check_model(model)


def test_append_l2_normalise_gives_unit_rows_in_the_same_direction():
    model = real.append_l2_normalise(real.keep_outputs(_two_output_model(), ["emb"]), "emb", "sentence_embedding")
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    (out,) = sess.run(None, {"x": x, "ids": np.zeros((5, 2), dtype=np.int64)})  # inputs stay
    raw = x @ (np.arange(12, dtype=np.float32).reshape(3, 4) - 5) + 1
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_paraphrase_pairs_are_seeded_distinct_and_exclusive():
    seen: set = set()
    a, b, topics = real.paraphrase_pairs(np.random.default_rng(3), 20, seen)
    again = real.paraphrase_pairs(np.random.default_rng(3), 20)
    assert (a, b, topics) == again
    assert len(seen) == 20 and all(x != y for x, y in zip(a, b))  # two templates: never the same text
    more_a, _, _ = real.paraphrase_pairs(np.random.default_rng(3), 5, seen)  # other facts than the 20
    assert len(seen) == 25 and not set(more_a) & set(a)
    pairs = real.scored_pairs(topics, np.random.default_rng(0))
    assert pairs[:20] == [[i, 20 + i] for i in range(20)]
    assert all(0 <= i < 20 <= j < 40 for i, j in pairs)


def test_embedding_scores_of_the_original_and_of_noisy_embeddings():
    rng = np.random.default_rng(1)
    n, d = 30, 16
    facts = rng.normal(size=(n, d))
    original = np.concatenate([facts + 0.1 * rng.normal(size=(n, d)), facts + 0.1 * rng.normal(size=(n, d))])
    pairs = np.array(real.scored_pairs(["t"] * n, rng) + [[i, 2 * n - 1 - i] for i in range(n)])
    same = real.embedding_scores(original, original, pairs)
    assert same["spearman"] > 0.999 and same["retrieval_agree"] == 1.0 and same["retrieval_top1"] == 1.0
    assert abs(same["cos_to_original"] - 1.0) < 1e-9
    noisy = real.embedding_scores(original + 0.5 * rng.normal(size=original.shape), original, pairs)
    assert noisy["spearman"] < same["spearman"] and noisy["cos_to_original"] < 0.99


def test_vocab_words_are_two_disjoint_halves_of_the_whole_words():
    vocab = {w: i for i, w in enumerate(["[PAD]", "##ing", "ab", "apple", "tree", "Cafe", "dog", "x1y", "ship"])}
    calib, test = real.vocab_words(vocab, np.random.default_rng(0))
    assert sorted(calib + test) == ["apple", "dog", "ship", "tree"] and len(calib) == len(test) == 2


def test_paraphrase_pairs_with_words_name_the_same_two_words_in_both_sayings():
    words = ["lantern", "sheriff", "banana", "tractor", "violin"]
    a, b, _ = real.paraphrase_pairs(np.random.default_rng(5), 10, words=words)
    for x, y in zip(a, b):
        named = [w for w in words if f"the {w}" in x]
        assert len(named) == 2 and all(f"the {w}" in y for w in named)
