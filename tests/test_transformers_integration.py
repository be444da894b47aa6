"""transformers integration of randomly initialised tiny models: save/load, attention implementations, gradient
checkpointing, Trainer with gradient accumulation, losses, input checks, torch.compile, tuple outputs, head reuse."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForAudioFrameClassification

import htsat_hf  # noqa: F401  (registers the Auto classes)
from htsat_hf import HTSATConfig, HTSATForAudioClassification, HTSATForSoundEventDetection, HTSATModel
from htsat_hf.modeling_htsat import (
    HTSATSwinBlock,
    HTSATWindowAttention,
    relative_position_index,
    shifted_window_attention_mask,
)

from conftest import tiny_config

MODEL_CLASSES = [HTSATForAudioClassification, HTSATForSoundEventDetection, HTSATModel]


def randomise_batch_norm(model):
    """Non-trivial BatchNorm statistics and affine values, so that losing them on save/load would show."""
    norm = (model.htsat if hasattr(model, "htsat") else model).feature_norm
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn_like(norm.running_mean) * 5 - 30)
        norm.running_var.copy_(torch.rand_like(norm.running_var) * 50 + 10)
        norm.weight.copy_(torch.rand_like(norm.weight) + 0.5)
        norm.bias.copy_(torch.randn_like(norm.bias) * 0.1)
    return model


def features(batch=1, frames=1001, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 64, generator=generator) * 10 - 35


def main_outputs(model, x):
    with torch.no_grad():
        out = model(x)
    if isinstance(model, HTSATModel):
        return [out.last_hidden_state, out.pooler_output]
    if isinstance(model, HTSATForSoundEventDetection):
        return [out.logits, out.clip_logits]
    return [out.logits]


# ----------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_class,token_semantic",
    [
        (HTSATForAudioClassification, True),
        (HTSATForAudioClassification, False),
        (HTSATForSoundEventDetection, True),
        (HTSATModel, True),
    ],
)
def test_save_and_load_keeps_outputs(model_class, token_semantic, tmp_path):
    config = tiny_config(use_token_semantic_head=token_semantic)
    model = randomise_batch_norm(model_class(config)).eval()
    x = features()
    before = main_outputs(model, x)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    after = main_outputs(loaded, x)
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)

    # The recomputed, non-persistent buffers equal a fresh model's (not meta-device garbage).
    fresh_buffers = dict(model_class(config).named_buffers())
    loaded_buffers = dict(loaded.named_buffers())
    assert loaded_buffers.keys() == fresh_buffers.keys()
    for name, buffer in loaded_buffers.items():
        if "feature_norm" not in name:  # BatchNorm statistics come from the checkpoint
            torch.testing.assert_close(buffer, fresh_buffers[name], rtol=0, atol=0, msg=name)
    indices = masks = 0
    for module in loaded.modules():
        if isinstance(module, HTSATWindowAttention):
            indices += 1
            assert torch.equal(module.relative_position_index, relative_position_index(module.window_size))
        if isinstance(module, HTSATSwinBlock) and module.shift_size:
            masks += 1
            expected = shifted_window_attention_mask(*module.input_resolution, module.window_size, module.shift_size)
            assert torch.equal(module.shift_mask, expected)
    assert indices == sum(config.depths)
    assert masks == 3  # the odd block of each stage except the last (8x8 tokens, one window, no shift)


@pytest.mark.parametrize("id2label", [None, {0: "dog", 1: "cat"}])
def test_two_class_config_reloads_with_two_classes(id2label, tmp_path):
    # transformers omits an id2label equal to its own two-class default; HTS-AT's default is 527 classes.
    config = HTSATConfig(num_labels=2) if id2label is None else HTSATConfig(id2label=id2label)
    config.save_pretrained(tmp_path)
    reloaded = HTSATConfig.from_pretrained(tmp_path)
    assert reloaded.num_labels == 2
    assert reloaded.id2label == config.id2label
    assert reloaded.label2id == {label: index for index, label in config.id2label.items()}


def test_auto_classes_resolve_each_head(tmp_path):
    config = tiny_config()
    model = randomise_batch_norm(HTSATForAudioClassification(config)).eval()
    model.save_pretrained(tmp_path)
    x = features()
    assert type(AutoModelForAudioClassification.from_pretrained(tmp_path)) is HTSATForAudioClassification
    detector = AutoModelForAudioFrameClassification.from_pretrained(tmp_path).eval()
    backbone = AutoModel.from_pretrained(tmp_path).eval()
    assert type(detector) is HTSATForSoundEventDetection and type(backbone) is HTSATModel
    with torch.no_grad():
        torch.testing.assert_close(backbone(x).last_hidden_state, model.htsat(x).last_hidden_state, rtol=0, atol=1e-6)


def test_classifier_weights_load_into_the_detector(tmp_path):
    config = tiny_config()
    classifier = randomise_batch_norm(HTSATForAudioClassification(config)).eval()
    classifier.save_pretrained(tmp_path)
    detector, info = HTSATForSoundEventDetection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    detector.eval()
    x = features()
    with torch.no_grad():
        torch.testing.assert_close(detector(x).clip_logits, classifier(x).logits, rtol=0, atol=0)
    for (name, a), (_, b) in zip(classifier.state_dict().items(), detector.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [HTSATForAudioClassification, HTSATForSoundEventDetection])
def test_eager_and_sdpa_agree(model_class, tmp_path):
    model_class(tiny_config()).save_pretrained(tmp_path)
    eager = model_class.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = model_class.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
    x = features()
    for a, b in zip(main_outputs(eager, x), main_outputs(sdpa, x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # The sub-modules see the chosen implementation.
    attention = sdpa.htsat.encoder.stages[0].blocks[1].attention
    assert attention.config._attn_implementation == "sdpa"


def test_output_attentions_gives_per_block_weights():
    config = tiny_config()
    model = HTSATForAudioClassification(config).eval()
    with torch.no_grad():
        out = model(features(batch=2, frames=500), output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == sum(config.depths) == 8
    windows = [64, 64, 16, 16, 4, 4, 1, 1]  # (64x64, 32x32, 16x16 tokens) / 8x8 windows; the last stage: one
    heads = [1, 1, 2, 2, 4, 4, 8, 8]
    for weights, w, h in zip(out.attentions, windows, heads):
        assert weights.shape == (2 * w, h, 64, 64)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2 * w, h, 64), rtol=0, atol=1e-5)
        assert (weights >= 0).all()
    # Shifted block: tokens from different regions of a window get (almost) no attention.
    mask = model.htsat.encoder.stages[0].blocks[1].shift_mask  # (64 windows, 64, 64)
    shifted = out.attentions[1].view(2, 64, 1, 64, 64)
    masked = (mask == -100.0).unsqueeze(0).unsqueeze(2).expand_as(shifted)
    assert masked.any()
    assert shifted[masked].max() < 1e-20
    # Hidden states: after the patch embedding and after each stage.
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 4096, 16), (2, 1024, 32), (2, 256, 64), (2, 64, 128),
                                                          (2, 64, 128)]
    # No attentions unless asked.
    with torch.no_grad():
        plain = model(features(batch=2, frames=500))
    assert plain.attentions is None and plain.hidden_states is None
    torch.testing.assert_close(plain.logits, out.logits, rtol=0, atol=1e-5)


def test_inference_outputs_follow_weight_changes():
    """Outputs under no_grad must always reflect the current weights (the attention bias may be cached there)."""
    model = HTSATForAudioClassification(tiny_config()).eval()
    other = HTSATForAudioClassification(tiny_config()).eval()
    x = features(batch=1)

    def no_grad_logits(m):
        with torch.no_grad():
            return m(x).logits

    def grad_logits(m):  # no caching with gradients enabled
        return m(x).logits.detach()

    first = no_grad_logits(model)
    torch.testing.assert_close(no_grad_logits(model), first, rtol=0, atol=0)
    # In-place update of the bias tables, as an optimizer step does.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, HTSATWindowAttention):
                module.relative_position_bias_table.add_(torch.randn_like(module.relative_position_bias_table))
    changed = no_grad_logits(model)
    torch.testing.assert_close(changed, grad_logits(model), rtol=0, atol=1e-6)
    assert (changed - first).abs().max() > 1e-4
    # load_state_dict from another model.
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(no_grad_logits(model), no_grad_logits(other), rtol=0, atol=1e-6)
    # An optimizer step.
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    model(x, labels=torch.ones(1, 5)).loss.backward()
    optimizer.step()
    model.eval()
    torch.testing.assert_close(no_grad_logits(model), grad_logits(model), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def deterministic_training_config(**overrides):
    return tiny_config(drop_path_rate=0.0, spec_augment_time_stripes=0, spec_augment_freq_stripes=0, **overrides)


def loss_and_grads(model, x, labels):
    model.zero_grad()
    loss = model(x, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_class", [HTSATForAudioClassification, HTSATForSoundEventDetection])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_class):
    config = deterministic_training_config()
    model = randomise_batch_norm(model_class(config))
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing and not model.is_gradient_checkpointing
    model.train()
    checkpointed.train()
    x = features(batch=2)
    if model_class is HTSATForSoundEventDetection:
        labels = (torch.rand(2, 32, 5) > 0.7).float()
    else:
        labels = (torch.rand(2, 5) > 0.5).float()

    # Checkpointing recomputes each block during the backward pass: count the calls of a module inside one.
    calls = {"plain": 0, "checkpointed": 0}

    def counting(mlp, key):
        forward = mlp.forward

        def counted(*args):
            calls[key] += 1
            return forward(*args)

        mlp.forward = counted

    counting(model.htsat.encoder.stages[0].blocks[1].mlp, "plain")
    counting(checkpointed.htsat.encoder.stages[0].blocks[1].mlp, "checkpointed")
    loss_ck, grads_ck = loss_and_grads(checkpointed, x, labels)
    loss, grads = loss_and_grads(model, x, labels)
    torch.testing.assert_close(loss_ck, loss, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ck.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert calls == {"plain": 1, "checkpointed": 2}


def test_mixup_lambda_only_in_training():
    config = deterministic_training_config()
    model = HTSATForAudioClassification(config)
    x = features(batch=2, frames=300)
    model.train()
    with torch.no_grad():
        plain = model(x).logits
        swapped = model(x, mixup_lambda=torch.zeros(2)).logits  # each example replaced by its reversed-batch partner
        kept = model(x, mixup_lambda=torch.ones(2)).logits
    torch.testing.assert_close(swapped, plain.flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(kept, plain, rtol=0, atol=1e-6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, mixup_lambda=torch.zeros(2)).logits, model(x).logits, rtol=0, atol=0)


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"input_features": self.inputs[index], "labels": self.labels[index]}


def train_one_step(model, dataset, output_dir, batch_size, accumulation):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.5,
        weight_decay=0.0,
        optim="sgd",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1e9,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=dataset).train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    config = deterministic_training_config()
    torch.manual_seed(0)
    model = randomise_batch_norm(HTSATForAudioClassification(config))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Every example is a time permutation of the same spectrogram: the training-mode BatchNorm then sees the same
    # per-bin statistics in a batch of 2 as in a batch of 4, so only the loss normalisation can differ.
    base = features(batch=1, frames=300)[0]
    inputs = torch.stack([base[torch.randperm(300, generator=torch.Generator().manual_seed(i))] for i in range(4)])
    labels = (torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    dataset = FeatureDataset(inputs, labels)

    accumulated = train_one_step(copy.deepcopy(model), dataset, tmp_path / "acc", batch_size=2, accumulation=2)
    full = train_one_step(copy.deepcopy(model), dataset, tmp_path / "full", batch_size=4, accumulation=1)

    largest_update = max((full[n] - initial[n]).abs().max().item() for n in full)
    assert largest_update > 1e-3, "the step must move the parameters for the comparison to mean anything"
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=0, atol=1e-5, msg=name)

    # And the update is plain SGD on the mean loss of the 4 examples.
    reference = copy.deepcopy(model).train()
    _, grads = loss_and_grads(reference, inputs, labels)
    for name in full:
        expected = initial[name] - 0.5 * grads[name]
        torch.testing.assert_close(full[name], expected, rtol=0, atol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------


def test_multi_label_loss_is_bce_with_logits():
    model = HTSATForAudioClassification(tiny_config()).eval()
    labels = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    out = model(features(batch=2), labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels), rtol=0, atol=1e-7)
    # Integer multi-hot labels give the same loss.
    from htsat_hf.modeling_htsat import clip_classification_loss

    torch.testing.assert_close(
        clip_classification_loss(out.logits, labels.long(), "multi_label_classification"), out.loss, rtol=0, atol=1e-7
    )


def test_single_label_loss_is_cross_entropy():
    model = HTSATForAudioClassification(tiny_config(problem_type="single_label_classification")).eval()
    labels = torch.tensor([0, 4])
    x = features(batch=2)
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels), rtol=0, atol=1e-7)
    # Class probabilities (mixed targets) are cross-entropy against the distribution.
    from htsat_hf.modeling_htsat import clip_classification_loss

    probabilities = torch.tensor([[0.7, 0.0, 0.0, 0.0, 0.3], [0.0, 0.5, 0.5, 0.0, 0.0]])
    expected = -(probabilities * out.logits.log_softmax(-1)).sum(-1).mean()
    loss = clip_classification_loss(out.logits, probabilities, "single_label_classification")
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)


def test_problem_type_inferred_from_labels_when_unset():
    from htsat_hf.modeling_htsat import clip_classification_loss

    logits = torch.randn(2, 5)
    ids = torch.tensor([1, 2])
    multi = torch.tensor([[0.0, 1, 0, 0, 1], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(clip_classification_loss(logits, ids, None), F.cross_entropy(logits, ids))
    torch.testing.assert_close(
        clip_classification_loss(logits, multi, None), F.binary_cross_entropy_with_logits(logits, multi)
    )


def test_sound_event_detection_frame_bce():
    model = HTSATForSoundEventDetection(tiny_config()).eval()
    labels = (torch.rand(2, 32, 5) > 0.8).float()
    out = model(features(batch=2), labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels), rtol=0, atol=1e-7)


def test_wrong_label_shapes_raise():
    from htsat_hf.modeling_htsat import clip_classification_loss

    x = features(batch=1)
    multi = HTSATForAudioClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match="multi-hot"):
        multi(x, labels=torch.tensor([1]))
    single = HTSATForAudioClassification(tiny_config(problem_type="single_label_classification")).eval()
    with pytest.raises(ValueError, match="class ids"):
        single(x, labels=torch.zeros(1))  # float ids
    detector = HTSATForSoundEventDetection(tiny_config()).eval()
    with pytest.raises(ValueError, match="num_time_steps=32"):
        detector(x, labels=torch.zeros(1, 5))

    logits = torch.randn(2, 5)
    with pytest.raises(ValueError, match="multi-hot"):
        clip_classification_loss(logits, torch.zeros(2, 4), "multi_label_classification")
    with pytest.raises(ValueError, match="class ids"):
        clip_classification_loss(logits, torch.zeros(2, 4), "single_label_classification")  # wrong class count
    with pytest.raises(ValueError, match="class ids"):
        clip_classification_loss(logits, torch.zeros(2, 5, dtype=torch.long), "single_label_classification")
    with pytest.raises(ValueError, match="regression"):
        clip_classification_loss(logits, torch.zeros(2, 5), "regression")


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_wrong_input_shapes_raise(model_class):
    model = model_class(tiny_config()).eval()
    with pytest.raises(ValueError, match="input_features"):
        model(torch.randn(1001, 64))
    with pytest.raises(ValueError, match="input_features"):
        model(torch.randn(2, 1001, 32))
    with pytest.raises(ValueError, match="input_features"):
        model(torch.randn(2, 1, 1001, 64))
    with pytest.raises(ValueError, match="1024 frames"):
        model(torch.randn(1, 1025, 64))


def test_longest_and_short_inputs_are_accepted():
    model = HTSATForSoundEventDetection(tiny_config()).eval()
    with torch.no_grad():  # exactly 1024 frames, and a short input stretched to it
        assert model(torch.randn(1, 1024, 64)).logits.shape == (1, 32, 5)
        assert model(torch.randn(1, 50, 64)).logits.shape == (1, 32, 5)


# ----------------------------------------------------------------------------------------------------------------
# torch.compile, tuple outputs
# ----------------------------------------------------------------------------------------------------------------


def test_torch_compile_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    model = randomise_batch_norm(HTSATForSoundEventDetection(tiny_config())).eval()
    compiled = torch.compile(model, fullgraph=True)  # no graph breaks anywhere in the forward
    x = features(batch=1)
    with torch.no_grad():
        expected = model(x)
        actual = compiled(x)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(actual.clip_logits, expected.clip_logits, rtol=0, atol=1e-4)


def test_return_dict_false_returns_tuples():
    x = features(batch=1)
    classifier = HTSATForAudioClassification(tiny_config()).eval()
    with torch.no_grad():
        as_dict = classifier(x)
        with_loss = classifier(x, labels=torch.ones(1, 5), return_dict=False)
    assert isinstance(with_loss, tuple) and len(with_loss) == 2 and with_loss[0].ndim == 0
    torch.testing.assert_close(with_loss[1], as_dict.logits, rtol=0, atol=0)
    # Without labels only the logits; the config's return_dict=False applies too.
    classifier.config.return_dict = False
    with torch.no_grad():
        as_tuple = classifier(x)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], as_dict.logits, rtol=0, atol=0)

    detector = HTSATForSoundEventDetection(tiny_config()).eval()
    with torch.no_grad():
        out = detector(x)
        logits, clip_logits = detector(x, return_dict=False)
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(clip_logits, out.clip_logits, rtol=0, atol=0)

    backbone = HTSATModel(tiny_config()).eval()
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True)
        as_tuple = backbone(x, return_dict=False, output_hidden_states=True)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], out.pooler_output, rtol=0, atol=0)
    assert len(as_tuple[2]) == 5


def test_save_checked_model_saves_what_reloads_and_refuses_what_does_not(tmp_path):
    """The converters' last step (loading.save_checked_model): the saved folder reloads to the same logits; a
    difference above the tolerance or an extractor of another front end is refused, naming the folder asked for."""
    from htsat_hf import HTSATFeatureExtractor
    from htsat_hf.errors import InputError
    from htsat_hf.loading import save_checked_model

    config = tiny_config()
    model = HTSATForAudioClassification(config).eval()
    probe = torch.randn(2, config.max_frames, config.num_mel_bins) * 10 - 40
    extractor = HTSATFeatureExtractor.from_config(config)
    assert save_checked_model(tmp_path / "ok", model, extractor, probe, "out") <= 1e-5
    assert HTSATForAudioClassification.from_pretrained(tmp_path / "ok").config.num_labels == config.num_labels
    with pytest.raises(InputError, match=r"^out: the saved model's logits differ from the converted one's by"):
        save_checked_model(tmp_path / "strict", model, extractor, probe, "out", tolerance=-1.0)
    other = HTSATFeatureExtractor(hop_length=160)
    with pytest.raises(InputError, match="does not match the model's config"):
        save_checked_model(tmp_path / "other", model, other, probe, "out")
