"""The GPT decoder, its KV cache, the sampler and checkpoints."""

from __future__ import annotations

import pytest
import torch

from crystal.errors import ConfigError, WeightsError
from crystal_crystallm.checkpoint import load_checkpoint, save_checkpoint
from crystal_crystallm.model import CrystaLLMNet, GPTConfig
from crystal_crystallm.sampling import sample_tokens
from crystal_crystallm.tokenizer import tokenizer
from crystal_crystallm.vocab import VOCAB_SIZE

TOK = tokenizer()
TINY = GPTConfig(block_size=96, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def _net(seed: int = 0, cfg: GPTConfig = TINY, dtype: torch.dtype = torch.float64) -> CrystaLLMNet:
    torch.manual_seed(seed)
    return CrystaLLMNet(cfg).to(dtype).eval()


def test_paper_small_model_size_and_our_default():
    """The paper's small model (8 layers, 8 heads, d=512, context 1024) has ~25 M parameters."""
    paper = CrystaLLMNet(GPTConfig(block_size=1024, n_layer=8, n_head=8, n_embd=512))
    n = paper.num_parameters()
    assert 25.0e6 < n < 26.0e6, n
    # non-embedding count (what nanoGPT prints) ≈ 12·L·d² + biases + LN + tied token embedding
    assert n == 12 * 8 * 512**2 + 13 * 8 * 512 + 2 * 512 + VOCAB_SIZE * 512 + 1024 * 512
    ours = CrystaLLMNet()
    assert ours.lm_head.weight is ours.wte.weight  # weight tying
    assert ours.num_parameters() < 1.0e6


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_forward_is_causal():
    net = _net()
    x = torch.randint(0, 300, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 300, (2, 8))
    a, b = net(x), net(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-12)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_matches_full_forward():
    """Prefill + one-token steps + a multi-token chunk reproduce the full forward's logits."""
    net = _net()
    x = torch.randint(0, 300, (3, 30))
    full = net(x)
    cache = net.new_cache(3)
    parts = [net(x[:, :10], cache=cache, start=0)]
    parts += [net(x[:, t : t + 1], cache=cache, start=t) for t in range(10, 20)]
    parts.append(net(x[:, 20:30], cache=cache, start=20))  # chunk with start > 0 uses the offset mask
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-10)


def test_context_overflow_raises():
    net = _net()
    with pytest.raises(ConfigError, match="exceeds the model's context of 96"):
        net(torch.zeros((1, 97), dtype=torch.long))


def test_training_loss_ignores_padding():
    net = _net()
    a = TOK.encode("data_C8\nloop_\n")
    b = TOK.encode("data_Sr1Ti1O3\n_cell_length_a 3.9050\n")
    batch = TOK.encode_batch(["data_C8\nloop_\n", "data_Sr1Ti1O3\n_cell_length_a 3.9050\n"])
    out = net.training_loss(batch)
    la = net.training_loss(torch.tensor([a]))["loss"]
    lb = net.training_loss(torch.tensor([b]))["loss"]
    expected = (la * (len(a) - 1) + lb * (len(b) - 1)) / (len(a) + len(b) - 2)  # mean over real targets
    assert torch.allclose(out["loss"], expected, atol=1e-10)
    assert torch.allclose(out["perplexity"], torch.exp(out["loss"]))
    # a padded copy with extra all-padding columns gives the same loss
    wider = torch.cat([batch, torch.full((2, 7), TOK.pad_id)], dim=1)
    assert torch.allclose(net.training_loss(wider)["loss"], out["loss"], atol=1e-12)


def _prompts() -> list[list[int]]:
    return [TOK.encode("data_Sr1Ti1O3\n"), TOK.encode("data_C8\n"), TOK.encode("data_Ba2Ti2O6\nloop_\n")]


def test_greedy_sampling_same_with_and_without_cache():
    net = _net(1)
    a, fa = sample_tokens(net, _prompts(), greedy=True, use_cache=True, newline_id=TOK.newline_id)
    b, fb = sample_tokens(net, _prompts(), greedy=True, use_cache=False, newline_id=TOK.newline_id)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    for row, p in zip(a, _prompts()):  # every row starts with its own prompt
        assert row[: len(p)].tolist() == p


def test_sampling_is_seeded_and_respects_top_k():
    net = _net(2)

    def run(seed: int, **kw) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample_tokens(net, _prompts() * 2, generator=g, top_k=5, newline_id=TOK.newline_id, **kw)[0]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    assert torch.equal(run(7), run(7, use_cache=False))  # same draws through both paths
    # top_k=1 is greedy
    g = torch.Generator().manual_seed(0)
    one = sample_tokens(net, _prompts(), generator=g, top_k=1, newline_id=TOK.newline_id)[0]
    greedy = sample_tokens(net, _prompts(), greedy=True, newline_id=TOK.newline_id)[0]
    assert torch.equal(one, greedy)


def test_sampling_stops_at_blank_line_and_reports_unfinished():
    """A net biased towards newlines ends every row after two generated newlines."""
    net = _net(3)
    with torch.no_grad():
        net.lm_head.weight.zero_()  # tied: also zeroes the embeddings, logits = 0 ...
        net.ln_f.bias.zero_()
    bias = torch.zeros(VOCAB_SIZE, dtype=torch.float64)
    bias[TOK.newline_id] = 50.0
    net.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    ids, done = sample_tokens(net, _prompts(), newline_id=TOK.newline_id)
    assert done.all()
    for row, p in zip(ids, _prompts()):
        assert row[len(p) : len(p) + 2].tolist() == [TOK.newline_id] * 2
        assert (row[len(p) + 2 :] == TOK.pad_id).all()
    # no newline ever: rows fill the context and are unfinished
    bias[TOK.newline_id] = -50.0
    bias[TOK.token_to_id["C"]] = 50.0
    ids, done = sample_tokens(net, _prompts(), newline_id=TOK.newline_id, max_length=40)
    assert not done.any() and ids.shape == (3, 40) and (ids != TOK.pad_id).all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"max_length": 5}, "no room")],
)
def test_sampling_bad_arguments(kw, match):
    with pytest.raises(ConfigError, match=match):
        sample_tokens(_net(), _prompts(), newline_id=TOK.newline_id, **kw)


def test_checkpoint_round_trip(tmp_path):
    net = _net(4, dtype=torch.float32)
    path = tmp_path / "m.pt"
    digest = save_checkpoint(net, path, meta={"data": "x"})
    back, meta, sha = load_checkpoint(path, digest)
    assert sha == digest and meta == {"data": "x"} and back.cfg == net.cfg
    assert back.lm_head.weight is back.wte.weight
    x = torch.randint(0, 300, (2, 16))
    assert torch.allclose(back(x), net(x))
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint(path, "0" * 64)
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "other"}, tmp_path / "o.pt")
    with pytest.raises(WeightsError, match="not a CrystaLLM checkpoint"):
        load_checkpoint(tmp_path / "o.pt")
    obj = torch.load(path, weights_only=True)
    obj["vocab"] = obj["vocab"][:-1]
    torch.save(obj, tmp_path / "v.pt")
    with pytest.raises(WeightsError, match="vocabulary"):
        load_checkpoint(tmp_path / "v.pt")
