"""Hidden-state mixup (AMDA's mixup half): sampling, layer scaling, targets, the hooks and the method.

The shared AT-method contract (finite loss, gradients, same seed, sentence pairs, checkpoint) runs over
``mixup`` in test_methods.py; this file checks what is specific to mixup.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from test_methods import SENTENCES, cfg_for, make_batch, step
from torch import nn

import distat.methods.mixup as mixup_method
from distat import methods
from distat.methods.base import StepContext, embeds, forward_logits
from distat.methods.mixing import (
    default_layers,
    encoder_layers,
    mix_targets,
    mixing,
    sample_lambda,
    soft_kl,
)

# --------------------------------------------------------------------------------------------------
# pure functions


def test_default_layers_scale_the_paper_set():
    assert default_layers(12) == (7, 9, 12)
    assert default_layers(6) == (4, 5, 6)
    assert default_layers(24) == (14, 18, 24)
    assert default_layers(4) == (3, 4)
    assert default_layers(2) == (2,)
    assert default_layers(1) == (1,)
    for n in range(1, 49):
        layers = default_layers(n)
        assert layers == tuple(sorted(set(layers))) and 1 <= layers[0] and layers[-1] == n
    with pytest.raises(ValueError):
        default_layers(0)


def test_sample_lambda_is_reproducible_and_beta_distributed():
    before = torch.get_rng_state()
    a = [sample_lambda(2.0, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    assert [sample_lambda(0.4, g1) for _ in range(20)] == [sample_lambda(0.4, g2) for _ in range(20)]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never touched
    for alpha in (2.0, 0.4):
        g = torch.Generator().manual_seed(0)
        xs = torch.tensor([sample_lambda(alpha, g) for _ in range(4000)], dtype=torch.float64)
        assert ((xs >= 0) & (xs <= 1)).all()
        assert abs(xs.mean().item() - 0.5) < 0.02
        var = 1 / (4 * (2 * alpha + 1))  # Var Beta(α, α)
        assert abs(xs.var().item() - var) < 0.1 * var, (alpha, xs.var().item(), var)
    assert 0 <= sample_lambda(1e-3, torch.Generator().manual_seed(0)) <= 1
    with pytest.raises(ValueError):
        sample_lambda(0.0, torch.Generator())


def test_mix_targets_by_hand():
    labels = torch.tensor([0, 3, 1, 3])
    perm = torch.tensor([1, 0, 3, 2])
    t = mix_targets(labels, perm, 0.75, 4)
    expected = torch.tensor([
        [0.75, 0.00, 0.00, 0.25],
        [0.25, 0.00, 0.00, 0.75],
        [0.00, 0.75, 0.00, 0.25],
        [0.00, 0.25, 0.00, 0.75],
    ])
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t.sum(-1), torch.ones(4))


def test_soft_kl_direction_and_zeros():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    onehot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(soft_kl(onehot, logits), F.cross_entropy(logits, labels))  # KL = CE for one-hot
    soft = torch.softmax(torch.randn(5, 4), -1)
    reference = F.kl_div(F.log_softmax(logits, -1), soft, reduction="batchmean")  # KL(soft ‖ p)
    torch.testing.assert_close(soft_kl(soft, logits), reference)
    assert soft_kl(soft, soft.log()).abs() < 1e-6


# --------------------------------------------------------------------------------------------------
# the hooks


def _doubled(batch):
    return {k: torch.cat([v, v]) for k, v in batch.items()}


def _logits(model, batch):
    return forward_logits(model, model, batch, embeds(model, batch))


def _load(tiny_model_dir, attn: str):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation=attn)
    return model.eval()


def _key_attend(mask: torch.Tensor) -> torch.Tensor:
    """(N, T) bool: which keys each row may attend to, for any mask encoding where larger = attend."""
    allowed = mask == mask.max()
    return allowed.reshape(mask.shape[0], -1, mask.shape[-1])[:, 0, :]


@pytest.mark.parametrize("mix_type", ["tmix", "smix"])
@pytest.mark.parametrize("layer", [1, 2])
def test_lambda_one_with_identity_perm_reproduces_the_clean_branch(mix_type, layer, tiny_model, tokenizer):
    tiny_model.eval()
    batch = _doubled(make_batch(tokenizer))
    with torch.no_grad(), mixing(tiny_model, layer=layer, lam=1.0, perm=torch.arange(4), mix_type=mix_type):
        clean, mixed = _logits(tiny_model, batch).chunk(2)
    torch.testing.assert_close(mixed, clean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mix_type", ["tmix", "smix"])
@pytest.mark.parametrize("layers", [[1], [2]])
def test_lambda_one_makes_kl_equal_clean_ce(mix_type, layers, tiny_model, tokenizer, monkeypatch):
    """λ = 1: the mixed targets are one-hot and the mixed branch is the clean one, so KL = CE and the
    loss is (1 + mix_weight)·CE. The batch has no padding, so TMix's union mask changes nothing."""
    monkeypatch.setattr(mixup_method, "sample_lambda", lambda alpha, generator: 1.0)
    enc = tokenizer(SENTENCES, truncation=True, max_length=8, padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([1, 0, 0, 1])}
    assert batch["attention_mask"].all()
    tiny_model.eval()
    method, out = step("mixup", tiny_model, batch, mix_type=mix_type, mix_layers=layers, mix_weight=0.5)
    ce = out.logs["natural_loss"]
    assert out.logs["mix_lambda"] == 1.0 and out.logs["mix_layer"] == layers[0]
    assert out.logs["mix_kl"] == pytest.approx(ce, rel=1e-5)
    assert out.loss.item() == pytest.approx(1.5 * ce, rel=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mix_type", ["tmix", "smix"])
def test_mixed_hidden_states_and_masks(mix_type, attn, tiny_model_dir, tokenizer):
    model = _load(tiny_model_dir, attn)
    base = make_batch(tokenizer)
    batch = _doubled(base)
    am = base["attention_mask"].bool()
    assert not am.all()  # padding
    perm, lam, b = torch.tensor([1, 2, 3, 0]), 0.7, 4
    assert not torch.equal(am | am[perm], am)  # some partner is longer: the union differs from the own mask
    layers = encoder_layers(model)

    def capture(store):
        def out_hook(_m, _a, output):
            store["hidden"] = output[0].detach().clone()

        def mask_hook(_m, args, kwargs):
            store["mask"] = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

        return [layers[0].register_forward_hook(out_hook),
                layers[1].register_forward_pre_hook(mask_hook, with_kwargs=True)]

    plain: dict = {}
    handles = capture(plain)
    with torch.no_grad():
        plain_logits = _logits(model, batch)
    for h in handles:
        h.remove()

    mixed: dict = {}
    with torch.no_grad(), mixing(model, layer=1, lam=lam, perm=perm, mix_type=mix_type):
        handles = capture(mixed)  # registered after the mixing hooks: they see the mixed tensors
        mixed_logits = _logits(model, batch)
    for h in handles:
        h.remove()
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in layers)

    h0, h1 = plain["hidden"], mixed["hidden"]
    assert torch.equal(h1[:b], h0[:b])  # the clean half is untouched
    torch.testing.assert_close(mixed_logits[:b], plain_logits[:b])
    second = h0[b:]
    if mix_type == "tmix":
        torch.testing.assert_close(h1[b:], lam * second + (1 - lam) * second[perm])
        assert ((h1[b:] - second).abs().amax(-1) > 0).all()  # every token of every row changed
    else:
        torch.testing.assert_close(h1[b:, 0], lam * second[:, 0] + (1 - lam) * second[perm, 0])
        assert ((h1[b:, 0] - second[:, 0]).abs().amax(-1) > 0).all()
        assert torch.equal(h1[b:, 1:], second[:, 1:])  # only position 0 is mixed

    m0, m1 = _key_attend(plain["mask"]), _key_attend(mixed["mask"])
    torch.testing.assert_close(m0, torch.cat([am, am]))
    assert torch.equal(m1[:b], am)
    assert torch.equal(m1[b:], (am | am[perm]) if mix_type == "tmix" else am)  # TMix: union of the two


def test_hooks_are_removed_after_an_error(tiny_model, tokenizer):
    batch = make_batch(tokenizer)  # not doubled: the mixing hook refuses it
    with pytest.raises(RuntimeError, match="doubled batch"), mixing(
        tiny_model, layer=1, lam=0.5, perm=torch.arange(4), mix_type="tmix"
    ):
        _logits(tiny_model, batch)
    assert all(not layer._forward_hooks and not layer._forward_pre_hooks for layer in encoder_layers(tiny_model))


# --------------------------------------------------------------------------------------------------
# the method


class _CountingWrapper(nn.Module):
    """Stands in for a DDP wrapper: counts the forwards that go through it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **kwargs):
        self.calls += 1
        return self.module(**kwargs)


@pytest.mark.parametrize("mix_type", ["tmix", "smix"])
def test_one_forward_through_ctx_model_and_gradients(mix_type, tiny_model, tokenizer):
    batch = make_batch(tokenizer, pair=True)  # sentence pairs: token_type_ids reach the model
    method = methods.build(cfg_for("mixup", mix_type=mix_type, mix_layers=[1]))
    method.setup(tiny_model)
    wrapper = _CountingWrapper(tiny_model)
    ctx = StepContext(model=wrapper, module=tiny_model, backward=lambda loss, sync=True: loss.backward())
    torch.manual_seed(0)
    out = method.train_step(ctx, batch)
    assert wrapper.calls == 1
    assert torch.isfinite(out.loss) and out.delta is None
    assert set(out.logs) == {"natural_loss", "mix_kl", "mix_lambda", "mix_layer"}
    assert out.loss.item() == pytest.approx(out.logs["natural_loss"] + out.logs["mix_kl"], rel=1e-5)
    grads = {n: p.grad for n, p in tiny_model.named_parameters()}
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight",
                 "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight",
                 "classifier.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())


def test_mixed_branch_contributes_gradient(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    grads = []
    for weight in (0.0, 1.0):
        step("mixup", tiny_model, batch, seed=1, mix_weight=weight, mix_layers=[1])
        grads.append(tiny_model.classifier.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_same_seed_same_draws_and_resume_is_exact(tiny_model, tokenizer):
    batch = make_batch(tokenizer)
    tiny_model.eval()
    kw = {"mix_layers": [1, 2]}
    a, out_a = step("mixup", tiny_model, batch, seed=3, **kw)
    b, out_b = step("mixup", tiny_model, batch, seed=3, **kw)
    assert out_a.loss.item() == out_b.loss.item() and out_a.logs == out_b.logs

    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    restored = methods.build(cfg_for("mixup", **kw))
    restored.setup(tiny_model)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    ctx = StepContext.plain(tiny_model)
    next_a, next_r = a.train_step(ctx, batch), restored.train_step(ctx, batch)  # eval mode: deterministic
    assert next_a.logs == next_r.logs and next_a.loss.item() == next_r.loss.item()
    da, dr = a.draw(4), restored.draw(4)
    assert (da.layer, da.lam) == (dr.layer, dr.lam) and torch.equal(da.perm, dr.perm)

    draws = [a.draw(4) for _ in range(30)]
    assert {d.layer for d in draws} == {1, 2}
    assert len({d.lam for d in draws}) == 30
    assert len({tuple(d.perm.tolist()) for d in draws}) > 1


def test_default_layer_set_follows_depth(tiny_model):
    method = methods.build(methods.parse_settings({"name": "mixup"}))
    method.setup(tiny_model)  # 2 layers
    assert method.layers == default_layers(2) == (2,)


def test_bad_layers_and_backbones(tiny_model):
    method = methods.build(cfg_for("mixup", mix_layers=[1, 3]))
    with pytest.raises(ValueError, match="mix layer 3 is out of range.*2 encoder layers"):
        method.setup(tiny_model)
    with pytest.raises(ValueError, match="mix layer 5"), mixing(
        tiny_model, layer=5, lam=0.5, perm=torch.arange(2), mix_type="tmix"
    ):
        pass
    with pytest.raises(ValidationError, match="mix_layers"):
        methods.parse_settings({"name": "mixup", "mix_layers": [0]})
    with pytest.raises(ValidationError, match="mix_layers"):
        methods.parse_settings({"name": "mixup", "mix_layers": []})
    with pytest.raises(ValidationError, match="mix_type"):
        methods.parse_settings({"name": "mixup", "mix_type": "cutmix"})
    with pytest.raises(ValidationError, match="mix_alpha"):
        methods.parse_settings({"name": "mixup", "mix_alpha": 0})
    with pytest.raises(ValueError, match="encoder layers"):
        encoder_layers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="encoder layers"):
        methods.build(methods.parse_settings({"name": "mixup"})).setup(nn.Linear(2, 2))


def test_config_defaults():
    cfg = methods.parse_settings({"name": "mixup"})
    assert (cfg.mix_type, cfg.mix_alpha, cfg.mix_layers, cfg.mix_weight) == ("tmix", 2.0, None, 1.0)
    assert methods.parse_settings({"name": "mixup", "mix_layers": [12, 7, 9, 7]}).mix_layers == (7, 9, 12)
