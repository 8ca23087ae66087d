"""KL(base || checkpoint) on two tiny real Olmo2ForCausalLM models."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from scalpel import chat, cli
from scalpel.analysis import kl
from tokenizers import Tokenizer, decoders, models, trainers
from transformers import Olmo2Config, Olmo2ForCausalLM, PreTrainedTokenizerFast

PAD, EOS = "<|pad|>", "<|endoftext|>"


def _example(question, answer, system="sum"):
    return {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}]}


SHORT = _example("1+2", "3")
LONG = _example("12+34+56", "12+34=46\n46+56=102\nsum 102")


@pytest.fixture(scope="module")
def tokenizer():
    """A character-level BPE over the few characters the examples and role markers use (vocab <= 64)."""
    corpus = ["<|system|>\n", "<|user|>\n", "<|assistant|>\n", "sum", "0123456789+=\n"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=48, special_tokens=[PAD, EOS],
                                  initial_alphabet=sorted(set("".join(corpus))))
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, unk_token=None)
    hf.chat_template = chat.chat_template()
    assert len(hf) <= 64 and hf.pad_token_id == 0 and hf.eos_token_id == 1
    return hf


def _model(seed):
    torch.manual_seed(seed)
    config = Olmo2Config(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None, tie_word_embeddings=False, initializer_range=0.5)
    return Olmo2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def base():
    return _model(0)


@pytest.fixture(scope="module")
def perturbed(base):
    other = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return other


def _direct(base, ckpt, ids):
    """Per-position KL(base || ckpt) straight from torch's kl_div: input log q, target log p."""
    with torch.no_grad():
        log_p = F.log_softmax(base(input_ids=ids).logits[0], -1)
        log_q = F.log_softmax(ckpt(input_ids=ids).logits[0], -1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def test_encode_is_the_whole_templated_conversation(tokenizer):
    ids, cut = kl.encode(tokenizer, SHORT)
    text = "<|endoftext|><|system|>\nsum\n<|user|>\n1+2\n<|assistant|>\n3<|endoftext|>"
    assert not cut and tokenizer.decode(ids[0]) == text
    assert ids[0, 0] == ids[0, -1] == tokenizer.eos_token_id
    short, cut = kl.encode(tokenizer, LONG, max_length=10)
    assert cut and short.shape == (1, 10)


def test_kl_with_itself_is_exactly_zero(base, tokenizer):
    out = kl.kl_divergence(base, copy.deepcopy(base), tokenizer, [SHORT, LONG])
    assert out["mean_kl"] == 0.0 and out["mean_seq_kl"] == 0.0 and out["per_example"] == [0.0, 0.0]
    assert out["n_examples"] == 2 and out["n_tokens"] == sum(kl.encode(tokenizer, e)[0].shape[1] for e in (SHORT, LONG))


def test_kl_matches_torch_kl_div_over_all_positions(base, perturbed, tokenizer):
    out = kl.kl_divergence(base, perturbed, tokenizer, [LONG])
    ids, _ = kl.encode(tokenizer, LONG)
    direct = _direct(base, perturbed, ids)
    assert out["mean_kl"] > 0.01
    assert out["mean_kl"] == pytest.approx(direct.mean().item(), abs=1e-6)
    assert out["mean_seq_kl"] == pytest.approx(direct.sum().item(), rel=1e-6)  # float32 sum of T terms
    assert out["n_tokens"] == ids.shape[1] == direct.shape[0]
    # The authors' computation (open-r1_olmo@2ea0f68:experiments/kl_tests.py, one example per batch): softmax, log,
    # the sum over the vocabulary, the mean over positions. That is mean_kl, not the per-sequence sum.
    with torch.no_grad():
        p_base = F.softmax(base(input_ids=ids).logits, -1)
        p_ft = F.softmax(perturbed(input_ids=ids).logits, -1)
    authors = torch.mean(torch.sum(p_base * (torch.log(p_base) - torch.log(p_ft)), dim=-1)).item()
    assert out["mean_kl"] == pytest.approx(authors, rel=1e-4)
    assert out["mean_seq_kl"] == pytest.approx(authors * ids.shape[1], rel=1e-4)


def test_kl_is_not_symmetric(base, perturbed, tokenizer):
    forward = kl.kl_divergence(base, perturbed, tokenizer, [LONG])["mean_kl"]
    backward = kl.kl_divergence(perturbed, base, tokenizer, [LONG])["mean_kl"]
    assert forward != pytest.approx(backward, rel=1e-3)


def test_average_per_token_then_per_example(base, perturbed, tokenizer):
    out = kl.kl_divergence(base, perturbed, tokenizer, [SHORT, LONG])
    per = [_direct(base, perturbed, kl.encode(tokenizer, e)[0]) for e in (SHORT, LONG)]
    means = [d.mean().item() for d in per]
    pooled = torch.cat(per).mean().item()
    assert out["per_example_tokens"] == [len(d) for d in per] and len(per[0]) < len(per[1]) / 2
    assert out["per_example"] == pytest.approx(means, abs=1e-6)
    assert out["mean_kl"] == pytest.approx(sum(means) / 2, abs=1e-6)
    assert abs(sum(means) / 2 - pooled) > 1e-3  # the fixture tells the two averages apart
    assert out["token_kl"] == pytest.approx(pooled, abs=1e-6)


def test_cut_to_the_models_context(base, perturbed, tokenizer):
    long = _example("1+2", "+".join("123456789") * 8)
    out = kl.kl_divergence(base, perturbed, tokenizer, [long])
    assert out["n_truncated"] == 1 and out["n_tokens"] == 64 and out["max_length"] == 64


def test_cli_writes_json(base, perturbed, tokenizer, tmp_path):
    for name, m in (("base", base), ("ckpt", perturbed)):
        m.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    ref = tmp_path / "reference.jsonl"
    ref.write_text("".join(json.dumps(e) + "\n" for e in (SHORT, LONG, SHORT)))
    out = tmp_path / "kl" / "grpo-step-5.json"
    cli.main(["kl", "--base", str(tmp_path / "base"), "--checkpoint", str(tmp_path / "ckpt"), "--reference", str(ref),
             "--run", "grpo", "--step", "5", "--out", str(out), "--limit", "2", "--device", "cpu"])
    got = json.loads(out.read_text())
    expected = kl.kl_divergence(base, perturbed, tokenizer, [SHORT, LONG])
    assert got["run"] == "grpo" and got["step"] == 5 and got["n_examples"] == 2
    assert got["mean_kl"] == pytest.approx(expected["mean_kl"], abs=1e-6)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_small_kl_is_accurate_and_chunking_changes_nothing(base):
    # A checkpoint a tiny step away (an early GRPO checkpoint): float32 arithmetic would be off by ~1% here.
    near = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(1e-4 * torch.randn(p.shape, generator=gen))
        ids = torch.randint(2, 48, (1, 64), generator=gen)
        a, b = base(input_ids=ids).logits[0], near(input_ids=ids).logits[0]
    log_p, log_q = F.log_softmax(a.double(), -1), F.log_softmax(b.double(), -1)
    exact = (log_p.exp() * (log_p - log_q)).sum(-1)
    got = kl.token_kl(a, b)
    assert 0 < exact.mean().item() < 1e-5
    assert torch.allclose(got, exact, rtol=1e-9, atol=1e-15)
    assert torch.equal(kl.token_kl(a, b, chunk=7), got)
