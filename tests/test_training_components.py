"""Tests of htsat_hf.training: schedule, balanced sampler, mixup, metrics, time-shift TTA, checkpoint averaging and
ensembles. Everything runs on tiny models and a few short clips."""

import json
import math
import socket

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, top_k_accuracy_score
from torch import nn
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from htsat_hf import HTSATFeatureExtractor, HTSATForAudioClassification
from htsat_hf.errors import InputError
from htsat_hf.training import (
    Accuracy,
    AudioTaggingMetrics,
    BalancedClassSampler,
    audio_tagging_scores,
    average_checkpoints,
    classification_accuracy,
    ensemble_evaluate,
    ensemble_predict,
    get_htsat_schedule,
    htsat_lr_factor,
    make_compute_metrics,
    sample_mixup,
    time_shift_offsets,
    time_shift_tta,
)
from htsat_hf.training.data import (
    AudioClassificationCollator,
    LabelSpec,
    check_audio_files,
    check_labels,
    decode_audio,
    infer_label_spec,
    read_label_names,
)
from htsat_hf.training.trainer import HTSATTrainer
from htsat_hf.training.model_setup import build_config, load_for_labels, load_swin_weights, parse_config_overrides

# Notes section 3: 0.02, 0.05, 0.1 for epochs 0-2, then 0.1 up to epoch 10, 0.05 up to 20, 0.02 up to 30, then 0.03.
EXPECTED_FACTORS = (
    [0.02, 0.05, 0.1]  # epochs 0-2
    + [0.1] * 8  # epochs 3-10
    + [0.05] * 10  # epochs 11-20
    + [0.02] * 10  # epochs 21-30
    + [0.03] * 10  # epochs 31-40
)
CLIP_SECONDS = 0.5
SAMPLING_RATE = 32000


# --------------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------------------------------


def test_lr_factor_table_of_the_original():
    assert len(EXPECTED_FACTORS) == 41
    assert [htsat_lr_factor(epoch) for epoch in range(41)] == EXPECTED_FACTORS
    assert htsat_lr_factor(99) == 0.03
    with pytest.raises(ValueError):
        htsat_lr_factor(-1)


def test_schedule_steps_once_per_optimizer_step():
    parameter = nn.Parameter(torch.zeros(1))
    groups = [{"params": [parameter]}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 2.0}]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    scheduler = get_htsat_schedule(optimizer, steps_per_epoch=3)
    seen = []
    for _ in range(41 * 3):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [lrs[0] for lrs in seen] == pytest.approx([EXPECTED_FACTORS[step // 3] for step in range(41 * 3)])
    assert [lrs[1] for lrs in seen] == pytest.approx([2 * EXPECTED_FACTORS[step // 3] for step in range(41 * 3)])


def test_schedule_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path):
    def make(steps_per_epoch):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        return optimizer, get_htsat_schedule(optimizer, steps_per_epoch)

    optimizer, scheduler = make(steps_per_epoch=4)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")

    resumed_optimizer, resumed = make(steps_per_epoch=1)  # the saved epoch length must win
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    for _ in range(10):
        assert resumed.get_last_lr() == pytest.approx(scheduler.get_last_lr())
        for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
            opt.step()
            sched.step()
    assert resumed.get_last_lr() == pytest.approx([EXPECTED_FACTORS[20 // 4]])


class _TinyRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def test_schedule_drives_trainer_learning_rates(tmp_path):
    model = _TinyRegressor()
    dataset = [{"x": torch.randn(2), "labels": float(i)} for i in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        optimizers=(optimizer, get_htsat_schedule(optimizer, steps_per_epoch=2)),
    )
    trainer.train()
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert logged == pytest.approx([1e-3 * factor for factor in (0.02, 0.02, 0.05, 0.05, 0.1, 0.1)])


# --------------------------------------------------------------------------------------------------------------------
# Class-balanced sampler
# --------------------------------------------------------------------------------------------------------------------

# 100 clips, one label each: class 0 in 90 clips, class 1 in 9, class 2 in one.
IMBALANCED_LABELS = [0] * 90 + [1] * 9 + [2]


def _class_counts(indices, labels=IMBALANCED_LABELS):
    return np.bincount([labels[i] for i in indices], minlength=3)


def test_balanced_sampler_draws_every_class_equally_often():
    assert _class_counts(BalancedClassSampler(IMBALANCED_LABELS, num_samples=300)).tolist() == [100, 100, 100]
    # An epoch that ends mid-round: counts differ by at most one.
    counts = _class_counts(BalancedClassSampler(IMBALANCED_LABELS, num_samples=301, seed=3))
    assert counts.sum() == 301 and counts.max() - counts.min() <= 1


def test_balanced_sampler_rounds_are_class_permutations():
    draw = BalancedClassSampler(IMBALANCED_LABELS, num_samples=30, seed=5).global_draw(0)
    rounds = np.array([IMBALANCED_LABELS[i] for i in draw]).reshape(10, 3)
    assert all(sorted(row) == [0, 1, 2] for row in rounds.tolist())
    assert len({tuple(row) for row in rounds.tolist()}) > 1  # the class order is reshuffled every round


def test_balanced_sampler_picks_uniformly_among_a_classes_clips():
    labels = [[0], [0, 1], [1], [2]]  # class 0: clips 0, 1; class 1: clips 1, 2; class 2: clip 3
    draw = list(BalancedClassSampler(labels, num_samples=6000, seed=1))
    counts = np.bincount(draw, minlength=4)
    # Each class 2000 times; clips 0 and 2 get half of their class, clip 1 half of two classes, clip 3 all of its own.
    assert counts[3] == 2000
    assert abs(counts[0] - 1000) < 5 * math.sqrt(2000 * 0.25)
    assert abs(counts[2] - 1000) < 5 * math.sqrt(2000 * 0.25)
    assert counts.sum() == 6000


def test_balanced_sampler_reads_multi_hot_and_class_id_lists_alike():
    id_lists = [[0, 2], [1], [2], [0], [1, 2]]
    multi_hot = np.zeros((5, 4), dtype=np.float32)  # class 3 has no clip: it is left out of the rounds
    for clip, ids in enumerate(id_lists):
        multi_hot[clip, ids] = 1
    expected = list(BalancedClassSampler(id_lists, num_samples=40, seed=7))
    assert list(BalancedClassSampler(multi_hot, num_samples=40, seed=7)) == expected
    assert list(BalancedClassSampler(torch.from_numpy(multi_hot), num_samples=40, seed=7)) == expected
    assert BalancedClassSampler(multi_hot, num_samples=40).classes.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="multi-hot"):
        BalancedClassSampler(np.zeros(5), num_samples=4)


def test_balanced_sampler_ranks_take_disjoint_interleaved_shares_of_one_draw():
    ranks = [BalancedClassSampler(IMBALANCED_LABELS, 11, num_replicas=2, rank=r, seed=4) for r in range(2)]
    single = BalancedClassSampler(IMBALANCED_LABELS, 12, seed=4)
    for epoch in (0, 1):
        for sampler in (*ranks, single):
            sampler.set_epoch(epoch)
        shares = [list(sampler) for sampler in ranks]
        assert [len(share) for share in shares] == [6, 6] == [len(sampler) for sampler in ranks]
        interleaved = [index for pair in zip(*shares) for index in pair]
        # Rank r holds positions r, r + 2, ... of the global draw: disjoint, and together the whole draw.
        assert interleaved == list(single) == ranks[0].global_draw(epoch).tolist()
        assert shares[0] != shares[1]


def test_balanced_sampler_is_deterministic_per_seed_and_epoch():
    def draw(seed, epoch):
        sampler = BalancedClassSampler(IMBALANCED_LABELS, 50, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0, 0) == draw(0, 0)
    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 0) != draw(0, 1)
    assert draw(0, 0) != draw(1, 0)
    assert draw(1, 0) != draw(0, 1)  # seeds and epochs do not alias each other


def test_balanced_sampler_resumes_mid_epoch_from_its_state(tmp_path):
    sampler = BalancedClassSampler(IMBALANCED_LABELS, 20, seed=2)
    sampler.set_epoch(3)
    full = sampler.rank_draw(3).tolist()
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(7)]
    assert consumed == full[:7]
    torch.save(sampler.state_dict(), tmp_path / "sampler.pt")

    resumed = BalancedClassSampler(IMBALANCED_LABELS, 20, seed=2)
    resumed.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    resumed.set_epoch(3)  # a loop re-entering the saved epoch keeps the position
    assert list(resumed) == full[7:]
    assert list(resumed) == full  # a further pass without set_epoch repeats the epoch
    resumed.set_epoch(4)
    assert list(resumed) == resumed.rank_draw(4).tolist()
    with pytest.raises(ValueError, match="seed"):
        BalancedClassSampler(IMBALANCED_LABELS, 20, seed=9).load_state_dict(sampler.state_dict())


# --------------------------------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------------------------------


def test_sample_mixup_draws_beta_weights():
    lam = sample_mixup(20000, alpha=0.5, generator=np.random.default_rng(0))
    assert lam.dtype == torch.float32 and lam.shape == (20000,)
    assert stats.kstest(lam.numpy(), "beta", args=(0.5, 0.5)).pvalue > 1e-3
    assert not stats.kstest(lam.numpy(), "uniform").pvalue > 1e-3
    assert torch.equal(lam, sample_mixup(20000, alpha=0.5, generator=np.random.default_rng(0)))
    with pytest.raises(ValueError, match="alpha"):
        sample_mixup(4, alpha=0)
    with pytest.raises(ValueError, match="batch_size"):
        sample_mixup(0)


def test_mixup_with_sampled_weights_matches_the_original():
    """utils.do_mixup of the original: the batch mixed with its reversal; the middle of an odd batch is its own
    partner."""
    from htsat_hf.modeling_htsat import mixup

    features = torch.randn(5, 7, 3)
    lam = sample_mixup(5, generator=np.random.default_rng(2))
    flipped = torch.flip(features, dims=[0])
    original = (features.transpose(0, -1) * lam + flipped.transpose(0, -1) * (1 - lam)).transpose(0, -1)
    torch.testing.assert_close(mixup(features, lam), original)
    torch.testing.assert_close(mixup(features, lam)[2], features[2])


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Refuse every network connection, so a metric that reached for the Hub would fail."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tagging_data(seed, examples=300, classes=12):
    rng = np.random.default_rng(seed)
    # Two decimals make tied scores, where precision-recall and ROC points must be grouped as scikit-learn does.
    scores = np.round(rng.random((examples, classes)), 2).astype(np.float32)
    targets = (rng.random((examples, classes)) < np.linspace(0.05, 0.5, classes)).astype(np.int64)
    targets[0], targets[1] = 1, 0  # every class has a positive and a negative
    return scores, targets


def test_audio_tagging_metrics_equal_scikit_learn(offline):
    scores, targets = _tagging_data(0)
    expected_map = np.mean(average_precision_score(targets, scores, average=None))
    expected_auc = np.mean(roc_auc_score(targets, scores, average=None))
    result = AudioTaggingMetrics().compute(predictions=scores, references=targets)
    assert set(result) == {"mAP", "mAUC", "d_prime"}
    assert result["mAP"] == pytest.approx(expected_map, abs=1e-12)
    assert result["mAUC"] == pytest.approx(expected_auc, abs=1e-12)
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * stats.norm.ppf(expected_auc), abs=1e-10)


def test_audio_tagging_metrics_skip_classes_without_positives_or_negatives():
    scores, targets = _tagging_data(1, classes=6)
    targets[:, 2] = 0  # no positive: no AP, no AUC
    targets[:, 4] = 1  # no negative: AP (= 1) but no AUC
    with pytest.warns(UserWarning, match="mAP is averaged over 5 classes and mAUC over 4"):
        result = audio_tagging_scores(scores, targets)
    with_pos, with_both = [0, 1, 3, 4, 5], [0, 1, 3, 5]
    expected_ap = average_precision_score(targets[:, with_pos], scores[:, with_pos], average=None)
    expected_auc = roc_auc_score(targets[:, with_both], scores[:, with_both], average=None)
    assert result["mAP"] == pytest.approx(np.mean(expected_ap))
    assert result["mAUC"] == pytest.approx(np.mean(expected_auc))


def test_accuracy_and_top_k_equal_scikit_learn(offline):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(400, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 400)
    scores[np.arange(0, 400, 3), labels[::3]] += 1.5  # better than chance, so the values are not trivial
    result = Accuracy().compute(predictions=scores, references=labels)
    assert result == {
        "accuracy": pytest.approx(accuracy_score(labels, scores.argmax(1))),
        "top5_accuracy": pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=np.arange(10))),
    }
    top3 = Accuracy().compute(predictions=scores, references=labels, top_k=3)["top3_accuracy"]
    assert top3 == pytest.approx(top_k_accuracy_score(labels, scores, k=3, labels=np.arange(10)))


def test_accuracy_breaks_ties_like_argmax():
    scores = np.zeros((4, 6))
    scores[3, 5] = 1.0
    labels = np.array([0, 1, 5, 5])
    result = classification_accuracy(scores, labels, top_k=2)
    assert result["accuracy"] == accuracy_score(labels, scores.argmax(1)) == 0.5
    # Example 2 ties label 5 with five lower-indexed classes: rank 5, outside the top 2.
    assert result["top2_accuracy"] == 0.75


def test_compute_metrics_for_trainer(offline):
    scores, targets = _tagging_data(4)
    multi = make_compute_metrics("multi_label_classification")
    # Models with extra outputs give a tuple of predictions; the logits come first.
    result = multi(EvalPrediction(predictions=(scores, np.zeros((300, 3))), label_ids=targets.astype(np.float32)))
    logits = torch.from_numpy(scores).float()
    # The loss over the whole set at once, as Trainer reports it (eval_loss), next to the metrics.
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(targets).float())
    assert result == pytest.approx({**audio_tagging_scores(scores, targets), "loss": float(bce)}, rel=1e-6)

    labels = np.random.default_rng(5).integers(0, 12, 300)
    single = make_compute_metrics("single_label_classification", top_k=2)
    cross_entropy = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    assert single(EvalPrediction(predictions=scores, label_ids=labels)) == pytest.approx(
        {**classification_accuracy(scores, labels, top_k=2), "loss": float(cross_entropy)}, rel=1e-6
    )

    one_hot = np.eye(12, dtype=np.float32)[labels]  # BCE on one-hot targets (Speech Commands): accuracy as well
    result = multi(EvalPrediction(predictions=scores, label_ids=one_hot))
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    with pytest.raises(ValueError, match="problem_type"):
        make_compute_metrics("regression")


# --------------------------------------------------------------------------------------------------------------------
# Time-shift test-time augmentation
# --------------------------------------------------------------------------------------------------------------------


def test_time_shift_offsets_accumulate_like_the_original():
    assert time_shift_offsets() == [0, 100, 300, 600, 1000, 1500, 2100, 2800, 3600, 4500]
    assert time_shift_offsets(3, step_samples=7) == [0, 7, 21]
    assert time_shift_offsets(1) == [0]


class _RecordingModel(nn.Module):
    """Stands in for an HTS-AT classifier: logits from the mean log-mel per bin; keeps every input it sees."""

    def __init__(self, problem_type="multi_label_classification"):
        super().__init__()
        self.config = tiny_config(problem_type=problem_type)
        self.scale = nn.Parameter(torch.tensor(0.05))
        self.inputs = []

    def forward(self, input_features, return_dict=True):
        self.inputs.append(input_features.clone())
        return SequenceClassifierOutput(logits=self.scale * input_features.mean(dim=1)[:, :5] + 3.0)


def test_time_shift_tta_reproduces_the_original_test_step():
    extractor = HTSATFeatureExtractor(max_length_seconds=CLIP_SECONDS)
    rng = np.random.default_rng(6)
    clips = [rng.uniform(-0.5, 0.5, 12000).astype(np.float32), rng.uniform(-0.5, 0.5, 16000).astype(np.float32)]
    model = _RecordingModel()
    result = time_shift_tta(model, clips, extractor, SAMPLING_RATE)

    # The original's loop (sed_model.py, test_step) on the zero-padded batch.
    x = torch.from_numpy(np.stack([np.pad(clips[0], (0, 4000)), clips[1]]))
    expected_inputs, probabilities = [], []
    for i in range(10):
        features = extractor(x, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
        expected_inputs.append(features)
        probabilities.append(torch.sigmoid(0.05 * features.mean(dim=1)[:, :5] + 3.0))
        shift = 100 * (i + 1)
        x = torch.cat([x[:, shift:], x[:, :shift]], dim=1)

    assert len(model.inputs) == 10
    for seen, expected in zip(model.inputs, expected_inputs):
        torch.testing.assert_close(seen, expected)
    torch.testing.assert_close(result, torch.stack(probabilities).mean(0))
    assert not torch.allclose(result, probabilities[0])  # the shifts do change the prediction


def test_time_shift_tta_on_an_htsat_model_restores_training_mode():
    config = tiny_config(problem_type="single_label_classification")
    model = HTSATForAudioClassification(config).train()
    extractor = HTSATFeatureExtractor.from_config(config, max_length_seconds=CLIP_SECONDS)
    waveforms = torch.randn(2, 9000) * 0.1
    result = time_shift_tta(model, waveforms, extractor, SAMPLING_RATE, shifts=1)
    assert model.training
    model.eval()
    with torch.no_grad():
        features = extractor(waveforms, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
        expected = torch.softmax(model(features).logits, dim=-1)
    torch.testing.assert_close(result, expected)
    torch.testing.assert_close(result.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="16000 Hz"):
        time_shift_tta(model, waveforms, extractor, 16000)


# --------------------------------------------------------------------------------------------------------------------
# Weight averaging and ensembles
# --------------------------------------------------------------------------------------------------------------------


def _save_tiny_model(path, seed, **config_overrides):
    torch.manual_seed(seed)
    # A 128x128 image (a quarter of the tokens) keeps the forward passes of the ensemble tests cheap.
    config = tiny_config(spec_size=128, **config_overrides)
    model = HTSATForAudioClassification(config)
    norm = model.htsat.feature_norm
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    norm.num_batches_tracked.fill_(100 * seed)
    model.save_pretrained(path)
    HTSATFeatureExtractor.from_config(config, max_length_seconds=CLIP_SECONDS).save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    models = [_save_tiny_model(root / f"model{seed}", seed) for seed in (1, 2)]
    return [root / "model1", root / "model2"], models


def test_average_checkpoints_is_the_parameter_mean(saved_models, tmp_path):
    model_dirs, models = saved_models
    averaged = average_checkpoints(model_dirs, tmp_path / "averaged")
    reloaded = HTSATForAudioClassification.from_pretrained(tmp_path / "averaged")
    first, second = (model.state_dict() for model in models)
    for name, tensor in reloaded.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (first[name] + second[name]) / 2, msg=name)
        else:
            assert torch.equal(tensor, first[name]), name
        assert torch.equal(tensor, averaged.state_dict()[name])
    assert reloaded.htsat.feature_norm.num_batches_tracked.item() == 100
    assert HTSATFeatureExtractor.from_pretrained(tmp_path / "averaged").max_length_seconds == CLIP_SECONDS
    # The averaged model computes with its recomputed buffers, like any from_pretrained model.
    features = torch.randn(1, 51, 64)  # the 0.5 s clips of these models
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(features).logits, averaged(features).logits)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"num_labels": 4}, "id2label"), ({"sampling_rate": 16000, "hop_length": 160}, "sampling_rate")],
)
def test_average_checkpoints_refuses_mismatched_models(saved_models, tmp_path, overrides, field):
    other = tmp_path / "other"
    _save_tiny_model(other, 3, **overrides)
    with pytest.raises(InputError, match=f"cannot combine .*{field}"):
        average_checkpoints([saved_models[0][0], other], tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


def _labelled_clips(count=4):
    rng = np.random.default_rng(8)
    examples = []
    for i in range(count):
        waveform = rng.uniform(-0.3, 0.3, 10000 + 1000 * i).astype(np.float32)
        examples.append(
            {
                "audio": {"array": waveform, "sampling_rate": SAMPLING_RATE},
                "label": [int(v) for v in (rng.random(5) < 0.5)],
            }
        )
    return examples


def test_ensemble_predict_averages_model_probabilities(saved_models):
    model_dirs, _ = saved_models
    examples = _labelled_clips()
    waveforms = [example["audio"]["array"] for example in examples]
    per_model = []
    for model_dir in model_dirs:
        model = HTSATForAudioClassification.from_pretrained(model_dir).eval()
        extractor = HTSATFeatureExtractor.from_pretrained(model_dir)
        per_model.append(time_shift_tta(model, waveforms, extractor, SAMPLING_RATE, shifts=2))
    expected = torch.stack(per_model).mean(0).numpy()
    assert not np.allclose(per_model[0].numpy(), per_model[1].numpy())

    predicted = ensemble_predict(model_dirs, examples, batch_size=3, shifts=2)
    assert predicted.shape == (4, 5) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


def test_ensemble_evaluate_on_a_datasets_dataset(saved_models):
    model_dirs, _ = saved_models
    examples = _labelled_clips()
    for column in range(5):  # every class needs a positive and a negative
        examples[0]["label"][column], examples[1]["label"][column] = 1, 0
    dataset = datasets.Dataset.from_list(examples)
    result = ensemble_evaluate(model_dirs, dataset, batch_size=2)
    probabilities = ensemble_predict(model_dirs, examples, batch_size=4)
    assert result == pytest.approx(audio_tagging_scores(probabilities, np.array([e["label"] for e in examples])))
    with pytest.raises(ValueError, match="multi-hot"):
        ensemble_evaluate(model_dirs, [{**example, "label": 1} for example in examples])


def test_saved_model_folder_holds_the_first_models_config(saved_models, tmp_path):
    model_dirs, _ = saved_models
    average_checkpoints(model_dirs, tmp_path / "averaged")
    saved = json.loads((tmp_path / "averaged" / "config.json").read_text())
    first = json.loads((model_dirs[0] / "config.json").read_text())
    assert {key: saved[key] for key in ("architectures", "depths", "id2label", "problem_type")} == {
        key: first[key] for key in ("architectures", "depths", "id2label", "problem_type")
    }


def test_swin_initialisation_loads_matching_tensors_and_reports_the_rest(tmp_path, caplog):
    """An ImageNet Swin-T state dict (official names, RGB patch embedding, 1000-class head) initialises the backbone:
    the patch embedding is averaged over RGB, matching tensors are copied, the rest is reported."""
    import logging

    from conftest import tiny_config

    from htsat_hf import HTSATForAudioClassification
    from htsat_hf.training.model_setup import load_swin_weights

    model = HTSATForAudioClassification(tiny_config())
    swin = {
        "patch_embed.proj.weight": torch.randn(16, 3, 4, 4),
        "patch_embed.proj.bias": torch.randn(16),
        "layers.0.blocks.0.attn.qkv.weight": torch.randn(48, 16),
        "layers.0.blocks.1.attn.relative_position_bias_table": torch.randn(169, 1),  # window 7: does not fit
        "layers.3.downsample.reduction.weight": torch.randn(4, 4),  # no such tensor in HTS-AT
        "norm.weight": torch.randn(128),
        "head.weight": torch.randn(1000, 128),
    }
    path = tmp_path / "swin.pth"
    torch.save({"model": swin}, path)
    with caplog.at_level(logging.WARNING):
        report = load_swin_weights(model, path)
    htsat = model.htsat
    assert torch.equal(htsat.patch_embed.projection.weight, swin["patch_embed.proj.weight"].mean(1, keepdim=True))
    assert torch.equal(htsat.encoder.stages[0].blocks[0].attention.qkv.weight, swin["layers.0.blocks.0.attn.qkv.weight"])
    assert torch.equal(htsat.layernorm.weight, swin["norm.weight"])
    assert len(report["loaded"]) == 4
    assert {entry.split()[0] for entry in report["skipped"]} == {
        "layers.0.blocks.1.attn.relative_position_bias_table", "layers.3.downsample.reduction.weight", "head.weight"
    }
    assert "head.conv.weight" in report["missing"]
    assert any("Swin initialisation" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------------------------------------------------
# Training data through the one audio layer, and errors as InputError
# --------------------------------------------------------------------------------------------------------------------


def _half_scale_int16_sine(rate=SAMPLING_RATE, seconds=0.5):
    return np.round(16000 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.int16)


def test_decode_audio_scales_int16_arrays():
    # Before: {"array": int16} was cast without scaling, and this sine came back with a peak of 15999.
    pcm = _half_scale_int16_sine()
    waveform = decode_audio({"array": pcm, "sampling_rate": SAMPLING_RATE}, SAMPLING_RATE)
    assert waveform.dtype == np.float32 and waveform.max() == pytest.approx(16000 / 32768)
    np.testing.assert_array_equal(waveform, pcm / np.float32(32768))


def test_decode_audio_takes_every_form_of_audio(tmp_path):
    import soundfile
    import torchaudio
    from torchcodec.decoders import AudioDecoder

    clip16 = (0.3 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)).astype(np.float32)
    path = tmp_path / "clip16k.wav"
    soundfile.write(path, clip16, 16000, subtype="FLOAT")
    expected = torchaudio.functional.resample(torch.from_numpy(clip16), 16000, SAMPLING_RATE).numpy()
    for value in (
        {"array": clip16, "sampling_rate": 16000},  # resampled now, where it used to be refused
        {"path": str(path), "bytes": None},
        {"path": "clip16k.wav", "bytes": path.read_bytes()},
        AudioDecoder(str(path)),
        str(path),
    ):
        np.testing.assert_allclose(decode_audio(value, SAMPLING_RATE), expected, atol=1e-5, rtol=0)


def test_decode_audio_reads_audioset_packs_as_scaled_pcm(tmp_path):
    h5py = pytest.importorskip("h5py")
    pack = tmp_path / "pack.h5"
    with h5py.File(pack, "w") as handle:
        handle["waveform"] = np.stack([_half_scale_int16_sine(), np.zeros(16000, np.int16)])
    waveform = decode_audio({"hdf5_path": str(pack), "index_in_hdf5": 0}, SAMPLING_RATE)
    assert waveform.max() == pytest.approx(16000 / 32768)
    with pytest.raises(InputError, match=f"{pack}: cannot read waveform 5"):
        decode_audio({"hdf5_path": str(pack), "index_in_hdf5": 5}, SAMPLING_RATE)
    with pytest.raises(InputError, match="AudioSet packs hold 32 kHz audio"):
        decode_audio({"hdf5_path": str(pack), "index_in_hdf5": 0}, 16000)


def test_decode_audio_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio\n" * 50)
    with pytest.raises(InputError, match=f"{broken}: cannot decode audio"):
        decode_audio({"path": str(broken), "bytes": None}, SAMPLING_RATE)
    with pytest.raises(InputError, match="look like integer PCM"):
        decode_audio({"array": _half_scale_int16_sine().astype(np.float32), "sampling_rate": SAMPLING_RATE},
                     SAMPLING_RATE)


def test_check_audio_files_reads_paths_and_bytes(tmp_path):
    import soundfile

    good = tmp_path / "good.wav"
    soundfile.write(good, np.zeros(4000, np.float32), SAMPLING_RATE)
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio\n" * 50)
    split = datasets.Dataset.from_dict(
        {"audio": [{"path": str(good), "bytes": None}, {"path": None, "bytes": good.read_bytes()},
                   {"path": str(broken), "bytes": None}]}
    )
    with pytest.raises(InputError, match=f"{broken}: cannot decode audio"):
        check_audio_files(split, "audio", skip_bad_audio=False, role="eval")
    kept, skipped = check_audio_files(split, "audio", skip_bad_audio=True, role="eval")
    assert skipped == 1 and len(kept) == 2


def test_collator_scales_integer_pcm_like_the_extractor():
    config = tiny_config(num_labels=2)
    extractor = HTSATFeatureExtractor.from_config(config, max_length_seconds=CLIP_SECONDS)
    collator = AudioClassificationCollator(extractor, LabelSpec(["a", "b"], multi_label=False))
    pcm = _half_scale_int16_sine()
    batch = collator([{"audio": {"array": pcm, "sampling_rate": SAMPLING_RATE}, "label": "b"}])
    expected = extractor(pcm / np.float32(32768), sampling_rate=SAMPLING_RATE, return_tensors="pt")
    torch.testing.assert_close(batch["input_features"], expected["input_features"])
    assert batch["labels"].tolist() == [1]


def test_time_shift_tta_pads_8_bit_pcm_with_silence():
    # Zero is silence only after scaling: 8-bit WAV's silence is 128, so uint8 clips are scaled before padding.
    config = tiny_config(problem_type="single_label_classification")
    model = HTSATForAudioClassification(config).eval()
    extractor = HTSATFeatureExtractor.from_config(config, max_length_seconds=CLIP_SECONDS)
    pcm = np.random.default_rng(4).integers(96, 160, 9000).astype(np.uint8)
    as_float = ((pcm.astype(np.float32) - 128) / 128)[None, :]
    torch.testing.assert_close(
        time_shift_tta(model, [pcm], extractor, SAMPLING_RATE, shifts=3),
        time_shift_tta(model, as_float, extractor, SAMPLING_RATE, shifts=3),
    )


def test_ensemble_resamples_dicts_at_another_rate(saved_models):
    import torchaudio

    model_dirs, _ = saved_models
    clip16 = np.random.default_rng(5).uniform(-0.3, 0.3, 6000).astype(np.float32)
    resampled = torchaudio.functional.resample(torch.from_numpy(clip16), 16000, SAMPLING_RATE).numpy()
    np.testing.assert_allclose(
        ensemble_predict(model_dirs, [{"audio": {"array": clip16, "sampling_rate": 16000}}]),
        ensemble_predict(model_dirs, [{"audio": {"array": resampled, "sampling_rate": SAMPLING_RATE}}]),
        rtol=0,
        atol=1e-6,
    )
    with pytest.raises(InputError, match="example 0: the audio is empty"):
        ensemble_predict(model_dirs, [{"audio": {"array": np.zeros(0, np.float32), "sampling_rate": 16000}}])


def test_average_checkpoints_errors_are_input_errors(saved_models, tmp_path):
    model_dirs, _ = saved_models
    with pytest.raises(InputError, match="model_dirs is empty"):
        average_checkpoints([], tmp_path / "averaged")
    with pytest.raises(InputError, match=f"{tmp_path / 'typo'}: no such model folder"):
        average_checkpoints([model_dirs[0], tmp_path / "typo"], tmp_path / "averaged")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        average_checkpoints(model_dirs, tmp_path / "file")


def test_average_checkpoints_refuses_a_model_folder_given_twice(saved_models, tmp_path, monkeypatch):
    model_dirs, _ = saved_models
    monkeypatch.chdir(tmp_path)
    again = model_dirs[0].parent / ".." / model_dirs[0].parent.name / model_dirs[0].name
    with pytest.raises(InputError, match="the same model folder as .*, given twice"):
        average_checkpoints([model_dirs[0], model_dirs[1], again], tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()
    with pytest.raises(InputError, match="^nonexist: no such model folder$"):
        average_checkpoints([model_dirs[0], "nonexist"], tmp_path / "averaged")


def test_average_checkpoints_checks_each_extractor_against_its_config(saved_models, tmp_path):
    model_dirs, _ = saved_models
    mismatched = tmp_path / "mismatched"
    _save_tiny_model(mismatched, 4)
    HTSATFeatureExtractor(hop_length=160).save_pretrained(mismatched)
    with pytest.raises(InputError, match=f"{mismatched}: the feature extractor does not match .*hop_length: config "
                                         "320, feature extractor 160"):
        average_checkpoints([model_dirs[0], mismatched], tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()
    # A folder without an extractor gets one built from its config, saved with the average: its clips are the longest
    # the 128x128 image reads (256 frames, 2.55 s), not 10 s (1001 frames, which failed in the model).
    bare = tmp_path / "bare"
    _save_tiny_model(bare, 5)
    (bare / "preprocessor_config.json").unlink()
    average_checkpoints([bare, model_dirs[0]], tmp_path / "averaged")
    assert HTSATFeatureExtractor.from_pretrained(tmp_path / "averaged").max_length_seconds == 2.55


def test_model_setup_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="config override 'embed_dim' is not key=value"):
        parse_config_overrides("embed_dim")
    labels = ["a", "b"]
    with pytest.raises(InputError, match="config: invalid literal for int"):
        build_config(None, "embed_dim=abc", labels, "single_label_classification")
    with pytest.raises(InputError, match="stage 0 width 16 is not divisible by 3 heads"):
        build_config(None, "embed_dim=16,depths=[2,2,2,2],num_heads=[3,2,4,8]", labels, "single_label_classification")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=f"{tmp_path / 'config.json'}: cannot read the config"):
        build_config(str(tmp_path / "config.json"), None, labels, "single_label_classification")
    swin = tmp_path / "swin.pth"
    swin.write_text("not a checkpoint")
    with pytest.raises(InputError, match=f"{swin}: cannot be read as a Swin checkpoint"):
        load_swin_weights(HTSATForAudioClassification(tiny_config()), swin)
    with pytest.raises(InputError, match=f"{tmp_path / 'missing'}: no such model folder"):
        load_for_labels(str(tmp_path / "missing"), ["a"], "single_label_classification")


# --------------------------------------------------------------------------------------------------------------------
# Labels, label files, configs and the streamed schedule: the right answer or one clear line
# --------------------------------------------------------------------------------------------------------------------


def _labels(values, feature=None):
    return datasets.Dataset.from_dict({"label": values}, features=feature and datasets.Features({"label": feature}))


@pytest.mark.parametrize("missing", [None, float("nan"), "", "  "], ids=["none", "nan", "empty", "blank"])
def test_missing_single_label_is_refused_naming_the_row(missing):
    values = ["dog", missing, "cat"] if isinstance(missing, str) or missing is None else [1.0, missing, 2.0]
    with pytest.raises(InputError, match=r"^train split, row 1: the label is empty"):
        infer_label_spec(_labels(values), "label", multi_label=False)
    spec = LabelSpec(["cat", "dog"], multi_label=False)
    with pytest.raises(InputError, match=r"^eval split, row 1: the label is empty"):
        check_labels(_FakeSplit(["dog", missing]), spec, "label", "eval")


def test_missing_multi_label_value_is_no_class():
    spec = infer_label_spec(_labels(["dog;cat", None, "", "cat"]), "label")
    assert spec.multi_label and spec.names == ["cat", "dog"]
    for value in (None, "", float("nan")):
        assert spec.encode(value).tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="row 0: a missing label among the labels"):
        infer_label_spec(_labels([["dog", None], ["cat"]]), "label")


def test_whole_float_labels_are_class_ids_and_others_are_refused():
    spec = infer_label_spec(_labels([0.0, 2.0, 1.0]), "label")
    assert spec.names == ["0", "1", "2"] and spec.encode(2.0) == 2
    with pytest.raises(InputError, match=r"row 1: label 1.5 is not a class name or a whole class id"):
        infer_label_spec(_labels([0.0, 1.5]), "label")


def test_numbers_against_names_are_read_as_names_never_as_positions():
    spec = infer_label_spec(_labels(["dog", "cat"]), "label")  # names ['cat', 'dog']
    with pytest.raises(InputError, match=r"label 0 is a number but the classes are names \('cat', 'dog'\)"):
        spec.encode(0, "eval split, row 0")
    digits = infer_label_spec(_labels(["10", "2"]), "label")  # names ['10', '2']: 2 is the class named '2'
    assert digits.names == ["10", "2"] and digits.encode(2) == 1
    mixed = _FakeSplit([3, "dog"])  # e.g. a JSON-lines metadata file; Arrow columns cannot mix types
    with pytest.raises(InputError, match=r"the labels mix numbers \(train split, row 0: 3\) and names "
                                         r"\(train split, row 1: 'dog'\)"):
        infer_label_spec(mixed, "label")


class _FakeSplit:
    """A split whose label column holds Python objects of any type."""

    def __init__(self, values):
        self.values = values
        self.features = {"label": datasets.Value("string")}

    def select_columns(self, columns):
        return {"label": self.values}


def test_duplicate_and_blank_label_names_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"classes 0 and 1 have the same name 'dog' once surrounding whitespace"):
        LabelSpec(["dog", "dog "], multi_label=False)
    with pytest.raises(InputError, match=r"class 1 has a blank name"):
        LabelSpec(["dog", " "], multi_label=False)
    spec = infer_label_spec(_labels(["dog ", "dog", " cat"]), "label")  # values: one class per stripped name
    assert spec.names == ["cat", "dog"]


def test_label_names_file_plain_list_and_audioset_csv(tmp_path):
    plain = tmp_path / "labels.txt"
    plain.write_text("dog\ncat\nbird\n")
    assert read_label_names(str(plain)) == ["dog", "cat", "bird"]
    audioset = tmp_path / "class_labels_indices.csv"
    audioset.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n')
    assert read_label_names(str(audioset)) == ["Speech", "Male speech, man speaking"]
    plain.write_text("dog\n\ncat\n")
    with pytest.raises(InputError, match=f"{plain}, line 2: blank line in the label names file"):
        read_label_names(str(plain))
    plain.write_text("dog\ncat\ndog \n")
    with pytest.raises(InputError, match=f"{plain}, line 3: label 'dog' repeats line 1"):
        read_label_names(str(plain))
    audioset.write_text("index,mid,display_name\n0,/m/a,Speech\n1,/m/b,Speech\n")
    with pytest.raises(InputError, match=r"classes 0 and 1 have the same name 'Speech'"):
        read_label_names(str(audioset))
    plain.write_text("")
    with pytest.raises(InputError, match=f"{plain}: the label names file is empty"):
        read_label_names(str(plain))


def test_build_config_takes_a_saved_config_a_folder_or_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = tmp_path / "saved"
    from_save = tiny_config()
    from_save.save_pretrained(saved)
    for name in (saved / "config.json", saved):
        config = build_config(str(name), None, ["a", "b"], "single_label_classification")
        assert config.embed_dim == from_save.embed_dim and config.id2label == {0: "a", 1: "b"}
    with pytest.raises(InputError, match=f"{tmp_path}: the folder holds no config.json"):
        build_config(str(tmp_path), None, ["a"], "single_label_classification")
    with pytest.raises(InputError, match=r"^nobody/no-such-config: cannot load the config from the Hub"):
        build_config("nobody/no-such-config", None, ["a"], "single_label_classification")
    with pytest.raises(InputError, match=f"{tmp_path / 'absent.json'}: no such config file or folder"):
        build_config(str(tmp_path / "absent.json"), None, ["a"], "single_label_classification")
    other = tmp_path / "ast.json"
    other.write_text(json.dumps({"model_type": "audio-spectrogram-transformer"}))
    with pytest.raises(InputError, match="is a 'audio-spectrogram-transformer' config, not an HTS-AT"):
        build_config(str(other), None, ["a"], "single_label_classification")


def test_htsat_schedule_on_a_streamed_dataset(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(10))

    def trainer(size=None, **arguments):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                 per_device_train_batch_size=4, **arguments)
        return HTSATTrainer(model=_TinyRegressor(), args=args, train_dataset=Stream(), lr_schedule="htsat",
                            train_dataset_size=size)

    assert trainer(size=10, max_steps=100).steps_per_epoch() == 3  # ceil(10 / 4)
    assert trainer(size=10, max_steps=100, gradient_accumulation_steps=2).steps_per_epoch() == 2
    assert trainer(max_steps=100, num_train_epochs=20).steps_per_epoch() == 5  # max_steps over num_train_epochs
