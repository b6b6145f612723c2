"""LoRA parity with ColossalChat's own `coati.models.lora` (reference commit d4fb7bf, built on loralib 0.1.2).

Same weights copied across, fp32: the same forward in train and eval mode, the same merged weight after ColossalChat's
merge-on-eval, the same converted layers, shapes and trainable parameters. Where ours departs on purpose a test names
the departure and the option that restores ColossalChat's behaviour.
"""
import copy, sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import import_coati, HOW_TO_GET

coati = import_coati()
if coati is None: pytest.skip(HOW_TO_GET, allow_module_level=True)
import loralib
from coati.models import lora as ref          # coati/models/lora.py
from coati_nb.lora import LoraLinear, convert_to_lora_module, LoRAModule, LORA_TRAIN_BIAS
from coati_nb.models import get_family, tiny_config

EPS = 1e-6


def _pair(fan_in_fan_out=False, merge_weights=True, r=4, alpha=1, seed=0, bias=True):
    "ColossalChat's LoraLinear and ours on the same W (out=12, in=16), bias and LoRA factors (B non-zero)."
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(12, 16, generator=g), torch.randn(12, generator=g) if bias else None
    # ColossalChat takes W in nn.Linear's (out, in) layout and, with fan_in_fan_out, stores it transposed (lora.py:46-47)
    theirs = ref.LoraLinear(nn.Parameter(W.clone()), nn.Parameter(b.clone()) if bias else None, r=r, lora_alpha=alpha,
                            fan_in_fan_out=fan_in_fan_out, merge_weights=merge_weights)
    # ours takes the weight as it is stored: (in, out) when fan_in_fan_out
    ours = LoraLinear(W.T.clone() if fan_in_fan_out else W.clone(), b.clone() if bias else None, r=r, lora_alpha=alpha,
                      fan_in_fan_out=fan_in_fan_out, merge_weights=merge_weights)
    with torch.no_grad():
        theirs.lora_B.normal_(generator=g)                 # a "trained" update, so the LoRA branch matters
        ours.lora_A.copy_(theirs.lora_A); ours.lora_B.copy_(theirs.lora_B)
    x = torch.randn(3, 5, 16, generator=g)                 # (B, T, in)
    return theirs, ours, x


@pytest.mark.parametrize('fan_in_fan_out', [False, True])
@pytest.mark.parametrize('r,alpha', [(1, 1), (4, 1), (4, 16)])
def test_layer_shapes_scaling_and_train_forward(fan_in_fan_out, r, alpha):
    theirs, ours, x = _pair(fan_in_fan_out, r=r, alpha=alpha)
    assert (ours.in_features, ours.out_features) == (theirs.in_features, theirs.out_features) == (16, 12)
    assert ours.lora_A.shape == theirs.lora_A.shape and ours.lora_B.shape == theirs.lora_B.shape
    assert ours.scaling == theirs.scaling == alpha / r
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)   # same stored layout
    assert ours.weight.requires_grad == theirs.weight.requires_grad == False
    theirs.train(); ours.train()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=EPS)


def test_init_matches():
    "lora_A: kaiming-uniform(a=√5) like nn.Linear, lora_B: zeros (lora.py:49-53); same draw under the same seed."
    W = torch.randn(12, 16)
    torch.manual_seed(5); theirs = ref.LoraLinear(nn.Parameter(W.clone()), None, r=4)
    torch.manual_seed(5); ours = LoraLinear(W.clone(), None, r=4)
    torch.testing.assert_close(ours.lora_A, theirs.lora_A, rtol=0, atol=0)
    assert torch.count_nonzero(ours.lora_B) == torch.count_nonzero(theirs.lora_B) == 0


@pytest.mark.parametrize('fan_in_fan_out', [False, True])
def test_merge_on_eval(fan_in_fan_out):
    "layer.eval() merges W ← W + (alpha/r)·B·A in both (lora.py:73-85); same output, same merged weight."
    theirs, ours, x = _pair(fan_in_fan_out, merge_weights=True)
    y_train = theirs(x)
    theirs.eval(); ours.eval()
    assert theirs.merged and ours.merged
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=EPS)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=EPS)
    torch.testing.assert_close(ours(x), y_train, rtol=0, atol=1e-5)


@pytest.mark.parametrize('fan_in_fan_out', [False, True])
def test_train_after_eval_departs_same_function(fan_in_fan_out):
    """Departure: after eval() ColossalChat has *deleted* lora_A/lora_B (lora.py:83-84), so train() cannot subtract the
    update: it keeps W + ΔW and draws fresh factors (A random, B = 0; lora.py:63-68). Ours unmerges: W is back and the
    trained A, B are kept. The function is the same in both; the parametrisation (and so the next training step) is not."""
    theirs, ours, x = _pair(fan_in_fan_out, merge_weights=True)
    W0, A0, B0 = ours.weight.detach().clone(), ours.lora_A.detach().clone(), ours.lora_B.detach().clone()
    theirs.eval(); ours.eval()
    merged = theirs.weight.detach().clone()
    assert not hasattr(theirs, 'lora_A') and hasattr(ours, 'lora_A')
    theirs.train(); ours.train()
    assert not theirs.merged and not ours.merged
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)          # same function
    torch.testing.assert_close(theirs.weight, merged, rtol=0, atol=0)           # theirs: still merged
    assert torch.count_nonzero(theirs.lora_B) == 0 and not torch.allclose(theirs.lora_A, A0)
    torch.testing.assert_close(ours.weight, W0, rtol=0, atol=EPS)               # ours: unmerged
    torch.testing.assert_close(ours.lora_A, A0, rtol=0, atol=0); torch.testing.assert_close(ours.lora_B, B0, rtol=0, atol=0)


def test_parent_eval_departs_same_function():
    """Departure: ColossalChat merges only when eval() is called on the layer itself; a parent's eval() calls the
    child's train(False), which does not merge (lora.py:55-71). Ours hooks train(mode), so a parent's eval() merges too
    (with merge_weights=True). Outputs agree; only `merged` and the stored weight differ."""
    theirs, ours, x = _pair(merge_weights=True)
    nn.Sequential(theirs).eval(); nn.Sequential(ours).eval()
    assert not theirs.training and not ours.training
    assert not theirs.merged and ours.merged
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


def test_merge_weights_default_departs():
    "Departure: ColossalChat's LoraLinear defaults to merge_weights=True, ours to False (explicit merge()); "
    "its converter passes merge_weights=False (lora.py:103), so converted models agree. merge_weights=True restores it."
    import inspect
    assert inspect.signature(ref.LoraLinear).parameters['merge_weights'].default is True
    assert inspect.signature(LoraLinear).parameters['merge_weights'].default is False
    theirs, ours, x = _pair(merge_weights=False)
    theirs.eval(); ours.eval()
    assert not theirs.merged and not ours.merged
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=EPS)


def _tiny(family, seed=0):
    torch.manual_seed(seed)
    return get_family(family).causal_lm_cls(tiny_config(family, vocab_size=64, hidden_size=32)).eval()


def _lora_layers(model, cls):
    return {n: (tuple(m.lora_A.shape), tuple(m.lora_B.shape), tuple(m.weight.shape), m.bias is not None)
            for n, m in model.named_modules() if isinstance(m, cls)}


def _trainable(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('family', ['llama', 'opt', 'bloom'])
@pytest.mark.parametrize('mode', LORA_TRAIN_BIAS)
def test_convert_same_layers_and_trainable(family, mode):
    "On models built of nn.Linear, both convert the same layers with the same shapes and train the same parameters."
    theirs = ref.convert_to_lora_module(_tiny(family), 4, mode)
    ours = convert_to_lora_module(_tiny(family), 4, mode)
    assert _lora_layers(ours, LoraLinear) == _lora_layers(theirs, ref.LoraLinear)
    assert len(_lora_layers(ours, LoraLinear)) > 0
    assert _trainable(ours) == _trainable(theirs)


@pytest.mark.parametrize('family', ['llama', 'opt'])
def test_converted_model_same_logits(family):
    "Same base weights, LoRA factors copied across: the same logits in train mode and in eval mode."
    theirs = ref.convert_to_lora_module(_tiny(family), 4, 'none')
    ours = convert_to_lora_module(_tiny(family), 4, 'none')
    mt = dict(theirs.named_modules())
    with torch.no_grad():
        for n, m in ours.named_modules():
            if isinstance(m, LoraLinear):
                mt[n].lora_B.normal_(); m.lora_A.copy_(mt[n].lora_A); m.lora_B.copy_(mt[n].lora_B)
    ids = torch.randint(3, 64, (2, 7))
    for mode in (True, False):
        theirs.train(mode); ours.train(mode)
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=EPS)


@pytest.mark.parametrize('mode', LORA_TRAIN_BIAS)
def test_gpt2_conv1d_departs_and_include_conv1d_false_matches(mode):
    """Departure: GPT-2's attention and MLP layers are transformers' Conv1D, which ColossalChat's converter skips (it
    tests isinstance(child, nn.Linear), lora.py:107-112), so on GPT-2 only lm_head gets LoRA. Ours adapts Conv1D too;
    include_conv1d=False converts exactly ColossalChat's set."""
    theirs = ref.convert_to_lora_module(_tiny('gpt2'), 4, mode)
    assert sorted(_lora_layers(theirs, ref.LoraLinear)) == ['lm_head']
    ours = convert_to_lora_module(_tiny('gpt2'), 4, mode)
    assert len(_lora_layers(ours, LoraLinear)) == 1 + 4 * 2
    same = convert_to_lora_module(_tiny('gpt2'), 4, mode, include_conv1d=False)
    assert _lora_layers(same, LoraLinear) == _lora_layers(theirs, ref.LoraLinear)
    assert _trainable(same) == _trainable(theirs)


def test_mark_only_lora_as_trainable_same_as_loralib():
    "Our mark_only_lora_as_trainable gives loralib's requires_grad flags for every mode, on a model with biases."
    from coati_nb.lora import mark_only_lora_as_trainable
    for mode in LORA_TRAIN_BIAS:
        theirs = ref.convert_to_lora_module(_tiny('opt'), 2, 'none')
        ours = convert_to_lora_module(_tiny('opt'), 2, 'none')
        for p in theirs.parameters(): p.requires_grad_(True)
        for p in ours.parameters(): p.requires_grad_(True)
        loralib.mark_only_lora_as_trainable(theirs, mode); mark_only_lora_as_trainable(ours, mode)
        assert _trainable(ours) == _trainable(theirs), mode


def test_rank_zero_and_lora_module():
    "lora_rank=0 returns the module untouched in both; LoRAModule keeps ColossalChat's attribute names."
    m = _tiny('llama')
    assert ref.convert_to_lora_module(m, 0) is m and convert_to_lora_module(m, 0) is m
    assert not any(isinstance(x, (LoraLinear, ref.LoraLinear)) for x in m.modules())

    def build(base):
        class Net(base):
            def __init__(self):
                super().__init__(lora_rank=2, lora_train_bias='lora_only')
                torch.manual_seed(0)
                self.body = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
                self.norm = nn.LayerNorm(4)
                self.convert_to_lora()
        return Net()
    theirs, ours = build(ref.LoRAModule), build(LoRAModule)
    assert (ours.lora_rank, ours.lora_train_bias) == (theirs.lora_rank, theirs.lora_train_bias)
    assert _lora_layers(ours, LoraLinear) == _lora_layers(theirs, ref.LoraLinear)
    assert _trainable(ours) == _trainable(theirs)


def test_rank_zero_layer_departs():
    "Departure: ColossalChat's LoraLinear(r=0) is a plain linear layer (its default r); ours asks for r >= 1 and says so. "
    "`convert_to_lora_module(model, 0)` is the way to say 'no LoRA' in both."
    W, x = torch.randn(4, 6), torch.randn(2, 6)
    theirs = ref.LoraLinear(nn.Parameter(W.clone()), None)
    assert theirs.r == 0 and not hasattr(theirs, 'lora_A')
    torch.testing.assert_close(theirs(x), x @ W.T, rtol=0, atol=EPS)
    with pytest.raises(ValueError, match='the LoRA rank r must be a positive int, got 0'): LoraLinear(W.clone(), None, r=0)
