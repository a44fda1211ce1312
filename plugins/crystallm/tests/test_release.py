"""The released models' format and vocabulary, against a fixture made by the reference code.

``golden/`` was written by ``golden/make_golden.py`` with lantunes/CrystaLLM's own tokenizer and
GPT (torch 2.13.0): a random-weight ``ckpt.pt`` in the released format inside a ``.tar.gz`` as on
Zenodo (``_orig_mod.`` names, AdamW state, ``bias=False``, 371 tokens), a second ``ckpt.pt``
(biases, plain names), token ids of four CIF strings, logits and generated tokens. The
reference package is not needed here.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from crystal.errors import ConfigError, WeightsError
from crystal_crystallm.checkpoint import (
    RELEASE_FORMAT,
    load_checkpoint,
    load_named_weights,
    net_from_release,
    read_release,
    save_checkpoint,
)
from crystal_crystallm.model import CrystaLLMNet, GPTConfig
from crystal_crystallm.sampling import sample_tokens
from crystal_crystallm.tokenizer import tokenizer
from crystal_crystallm.vocab import REFERENCE_TOKENS, TOKENS

GOLDEN = Path(__file__).resolve().parent / "golden"
ARCHIVE = GOLDEN / "crystallm_golden.tar.gz"
PLAIN = GOLDEN / "ckpt_plain.pt"
REF = json.loads((GOLDEN / "reference.json").read_text(encoding="utf-8"))
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}  # max |logit - reference| (logits up to ~15)


@pytest.fixture(scope="module")
def logits_ref():
    with np.load(GOLDEN / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def archive(tmp_path):
    """A copy of the golden archive (loading writes the extracted ckpt.pt beside it)."""
    path = tmp_path / ARCHIVE.name
    path.write_bytes(ARCHIVE.read_bytes())
    return path


# --------------------------------------------------------------------------- vocabulary
def test_token_ids_equal_the_reference_tokenizer():
    tok = tokenizer(371)
    assert tok.vocab_size == len(REFERENCE_TOKENS) == 371 and TOKENS[:371] == REFERENCE_TOKENS
    for text, ids in zip(REF["cifs"], REF["ids"]):
        assert tok.encode(text) == ids
    # ours (375) tokenises the same way except the three space groups the reference lacks
    ours = tokenizer()
    for text, ids in zip(REF["cifs"][:3], REF["ids"][:3]):
        assert ours.encode(text) == ids
    edge = "_symmetry_space_group_name_H-M P6\n"
    assert tokenizer(371).tokenize(edge)[2:4] == ["P", "6"] and ours.tokenize(edge)[2] == "P6_sg"
    with pytest.raises(ConfigError, match="no vocabulary of 372"):
        tokenizer(372)


def test_prompts_tokenise_as_the_reference_prompts():
    """Space-group prompts of ours and of the reference's bin/make_prompt_file.py (texts copied from
    its output: two blanks between columns, noble-gas fall-backs unformatted) give the same ids."""
    from pymatgen.core import Composition

    from crystal_crystallm.canonical import make_prompt

    head = "loop_\n_atom_type_symbol\n_atom_type_electronegativity\n_atom_type_radius\n_atom_type_ionic_radius\n"
    reference = {
        ("Xe2F4", 221): f"data_Xe2F4\n{head}Xe  2.6000  2.16  0.6200\nF  3.9800  0.5000  0.7050\n"
        "_symmetry_space_group_name_H-M Pm-3m\n",
        ("SrTiO3", 168): f"data_Sr1Ti1O3\n{head}Sr  0.9500  2.0000  1.3200\nTi  1.5400  1.4000  0.8517\n"
        "O  3.4400  0.6000  1.2600\n_symmetry_space_group_name_H-M P6\n",
    }
    tok = tokenizer(371)
    for (formula, sg), text in reference.items():
        assert tok.encode(make_prompt(Composition(formula), sg)) == tok.encode(text)


# --------------------------------------------------------------------------- loading
def test_released_archive_loads(archive):
    net, meta, digest = load_checkpoint(archive)
    assert net.cfg == GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=16, dropout=0.1, bias=False, vocab_size=371)
    assert meta["format"] == RELEASE_FORMAT and meta["iter_num"] == 1750
    assert meta["best_val_loss"] == pytest.approx(0.4321) and meta["config"]["compile"] is True
    assert net.lm_head.weight is net.wte.weight and not net.training
    # the extracted ckpt.pt is kept beside the archive, stamped with the archive's sha256, and reused
    extracted = archive.with_name(archive.name + ".ckpt.pt")
    assert extracted.is_file() and archive.with_name(archive.name + ".ckpt.pt.sha256").read_text().split() == [digest]
    before = extracted.stat().st_mtime_ns
    again, _, _ = load_checkpoint(archive, digest)
    assert extracted.stat().st_mtime_ns == before
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    with pytest.raises(WeightsError, match="sha256"):
        load_checkpoint(archive, "0" * 64)


def test_plain_ckpt_and_archive_member_give_the_same_net(archive, tmp_path):
    with tarfile.open(archive) as tar:
        raw = tar.extractfile("crystallm_golden/ckpt.pt").read()  # type: ignore[union-attr]
    (tmp_path / "ckpt.pt").write_bytes(raw)
    a, _, _ = load_checkpoint(tmp_path / "ckpt.pt")
    b, _, _ = load_checkpoint(archive)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(("dtype", "tag"), [(torch.float32, "a32"), (torch.float64, "a64"), (torch.float32, "b32")])
def test_logits_match_the_reference_gpt(archive, logits_ref, dtype, tag):
    net = load_checkpoint(archive if tag.startswith("a") else PLAIN)[0].to(dtype)
    assert net.cfg.bias is tag.startswith("b")
    for i, ids in enumerate(REF["ids"]):
        with torch.no_grad():
            logits = net(torch.tensor([ids]))[0]
        ref = torch.from_numpy(logits_ref[f"{tag}_{i}"]).to(dtype)
        err = (logits[REF["positions"][i]] - ref).abs().max().item()
        assert err <= TOL[dtype], (tag, i, err)
        assert logits.argmax(-1).tolist() == REF["argmax"][tag][i]


def test_kv_cached_logits_match_the_reference(archive, logits_ref):
    net = load_checkpoint(archive)[0]
    ids = REF["ids"][0]
    cache = net.new_cache(1)
    with torch.no_grad():
        parts = [net(torch.tensor([ids[:50]]), cache=cache, start=0)]
        parts += [net(torch.tensor([[ids[t]]]), cache=cache, start=t) for t in range(50, len(ids))]
    logits = torch.cat(parts, dim=1)[0]
    err = (logits[REF["positions"][0]] - torch.from_numpy(logits_ref["a32_0"])).abs().max().item()
    assert err <= TOL[torch.float32]


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_and_seeded_sampling_give_the_reference_tokens(archive, use_cache):
    net = load_checkpoint(archive)[0]
    tok = tokenizer(net.vocab_size)
    s = REF["sampling"]
    for prompt, greedy, sampled in zip(REF["prompts"], REF["generated"]["greedy"], REF["generated"]["sampled"]):
        ids = tok.encode(prompt)
        length = len(ids) + REF["new_tokens"]
        kw = {"max_length": length, "newline_id": tok.newline_id, "use_cache": use_cache}
        out = sample_tokens(net, [ids], greedy=True, **kw)[0][0]
        assert out[: len(greedy)].tolist() == greedy
        top1 = sample_tokens(net, [ids], top_k=1, generator=torch.Generator().manual_seed(5), **kw)[0][0]
        assert top1[: len(greedy)].tolist() == greedy
        g = torch.Generator().manual_seed(s["seed"])  # the reference: torch.manual_seed(1337) before generate
        out = sample_tokens(net, [ids], temperature=s["temperature"], top_k=s["top_k"], generator=g, **kw)[0][0]
        assert out[: len(sampled)].tolist() == sampled


def test_generator_runs_a_released_checkpoint(archive):
    from crystal.components import GenerationConditions
    from crystal_crystallm.generator import CrystaLLMGenerator

    gen = CrystaLLMGenerator(checkpoint=archive, device="cpu", max_tokens=64, check_bond_lengths=False)
    assert gen.tokenizer.vocab_size == 371 and gen.weights_in_use() == ()
    samples = gen.sample(gen.requests(2, GenerationConditions(composition="NaCl"), seed=0), seed=0)
    assert [s.text.startswith("data_Na1Cl1\n") for s in samples] == [True, True]
    assert gen.last_report.num_sampled == 2  # random weights: nothing valid, but decoded and checked


def test_named_release_weights_download_verify_and_load(tmp_path, monkeypatch):
    """A registry entry of the released kind (a .tar.gz URL), served from file://."""
    from crystal.manifest import WeightsManifest
    from crystal.weights import sha256sum

    monkeypatch.setenv("CRYSTAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CRYSTAL_OFFLINE", raising=False)
    entry = WeightsManifest(
        name="crystallm-golden",
        file=ARCHIVE.as_uri(),
        sha256=sha256sum(ARCHIVE),
        size=ARCHIVE.stat().st_size,
        licence="MIT",
        training_data="none (random weights, tests/golden)",
    )
    net, meta, digest = load_named_weights(entry)
    assert digest == entry.sha256 and meta["format"] == RELEASE_FORMAT and net.vocab_size == 371


# --------------------------------------------------------------------------- safety and errors
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def test_archive_members_are_never_extracted_by_name(tmp_path):
    raw = (ARCHIVE.with_name("ckpt_plain.pt")).read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    path = _tar(
        work / "m.tar.gz",
        [
            (_member("../outside/evil.txt"), b"x"),
            (_member("a/ckpt.pt.bak"), b"junk"),
            (_member("/abs/../../outside/ckpt.pt"), raw),  # a hostile path: read, never written there
        ],
    )
    net, _, _ = load_checkpoint(path)
    assert net.cfg.bias is True
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == ["m.tar.gz", "m.tar.gz.ckpt.pt", "m.tar.gz.ckpt.pt.sha256"]


def test_archive_without_a_regular_ckpt_or_with_two(tmp_path):
    link = _tar(tmp_path / "l.tar.gz", [(_member("m/ckpt.pt", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None)])
    with pytest.raises(WeightsError, match=r"holds no ckpt\.pt"):
        load_checkpoint(link)
    raw = PLAIN.read_bytes()
    two = _tar(tmp_path / "t.tar.gz", [(_member("a/ckpt.pt"), raw), (_member("b/ckpt.pt"), raw)])
    with pytest.raises(WeightsError, match=r"more than one ckpt\.pt"):
        load_checkpoint(two)


def test_pickled_objects_are_refused(tmp_path):
    import pathlib

    obj = torch.load(PLAIN, weights_only=True)
    obj["config"] = {"out_dir": pathlib.PurePosixPath("out")}  # not a weights-only type
    torch.save(obj, tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match="weights-only"):
        read_release(tmp_path / "ckpt.pt")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda o: o["model_args"].update(vocab_size=500), "model_args CrystaLLM cannot build"),
        (lambda o: o["model_args"].update(rope=True), "unknown model_args rope"),
        (lambda o: o["model"].pop("transformer.ln_f.bias"), "does not fit"),
        (lambda o: o["model"].__setitem__("lm_head.weight", o["model"]["lm_head.weight"] + 1), "tied"),
        (lambda o: o.pop("model_args"), "not a CrystaLLM nanoGPT checkpoint"),
    ],
)
def test_bad_release_dicts(change, match):
    obj = torch.load(PLAIN, weights_only=True)
    obj["model"] = dict(obj["model"])
    change(obj)
    with pytest.raises(WeightsError, match=match):
        net_from_release(obj, "test")


def test_checkpoint_of_ours_in_another_token_order_is_permuted(tmp_path):
    """Our checkpoints store the token names: a file written in an older id order loads by name."""
    torch.manual_seed(0)
    net = CrystaLLMNet(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    save_checkpoint(net, tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    perm = torch.randperm(len(TOKENS), generator=torch.Generator().manual_seed(1))
    obj["vocab"] = [obj["vocab"][i] for i in perm]
    obj["state_dict"]["wte.weight"] = obj["state_dict"]["wte.weight"][perm]
    torch.save(obj, tmp_path / "b.pt")
    back = load_checkpoint(tmp_path / "b.pt")[0]
    x = torch.randint(0, len(TOKENS), (2, 20))
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-6)
