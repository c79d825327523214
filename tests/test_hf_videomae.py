"""Hugging Face `transformers` VideoMAE folders as encoders: the imported encoder computes what
transformers computes. transformers is a dev dependency: the tests build tiny random models
with it; the project never imports it."""

import json
import logging

import pytest
import torch

from salt.models import CheckpointError, load_encoder

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)


def tiny_config(**overrides):
    return transformers.VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_frames=4,
        tubelet_size=2,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        **overrides,
    )


def randomised(model, seed=0):
    """Random init leaves biases 0 and norms 1; perturb everything so each mapping matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def pixel_values(batch=2, seed=0):
    return torch.randn(batch, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # HF: [B, T, C, H, W]


@pytest.mark.parametrize("mean_pooling", [False, True])
def test_videomae_model_folder_gives_transformers_outputs(tmp_path, mean_pooling):
    model = randomised(transformers.VideoMAEModel(tiny_config(use_mean_pooling=mean_pooling, qv_bias=True)))
    model.save_pretrained(tmp_path / "hf")
    encoder, arch = load_encoder(tmp_path / "hf")
    assert arch["pos_embed"] == "sincos1d" and arch["qkv_bias"] == "qv" and arch["norm_eps"] == 1e-12
    assert arch["final_norm"] is (not mean_pooling)  # with mean pooling VideoMAEModel has no last norm
    x = pixel_values()
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state
        ours = encoder.eval()(x.permute(0, 2, 1, 3, 4))
    assert torch.allclose(ours, expected, atol=1e-4), (ours - expected).abs().max()
    # The weight file alone, with its config.json beside it, is the same model.
    alone, _ = load_encoder(tmp_path / "hf" / "model.safetensors")
    assert torch.equal(alone.state_dict()["blocks.1.attn.qkv.weight"], encoder.state_dict()["blocks.1.attn.qkv.weight"])


def test_pretraining_and_classification_models_give_their_encoder(tmp_path, caplog):
    pretrain = randomised(
        transformers.VideoMAEForPreTraining(tiny_config(use_mean_pooling=False, qv_bias=False)), seed=1
    )
    pretrain.save_pretrained(tmp_path / "pretrain")
    encoder, arch = load_encoder(tmp_path / "pretrain")  # the decoder is ignored
    x = pixel_values()
    with torch.no_grad():
        assert torch.allclose(
            encoder.eval()(x.permute(0, 2, 1, 3, 4)), pretrain.videomae(pixel_values=x).last_hidden_state, atol=1e-4
        )
    assert arch["qkv_bias"] is False

    classifier = randomised(
        transformers.VideoMAEForVideoClassification(tiny_config(use_mean_pooling=True, num_labels=5)), seed=2
    )
    classifier.save_pretrained(tmp_path / "classifier")
    with caplog.at_level("WARNING", logger="salt.models"):
        encoder, arch = load_encoder(tmp_path / "classifier")
    assert "fc_norm" in caplog.text and arch["final_norm"] is True
    with torch.no_grad():
        hidden = classifier.videomae(pixel_values=x).last_hidden_state
        ours = encoder.eval()(x.permute(0, 2, 1, 3, 4))
        # fc_norm normalised the pooled token there; here each token: the pooled statistics differ,
        # each token's normalisation is fc_norm itself.
        expected = torch.nn.functional.layer_norm(
            hidden, (64,), classifier.fc_norm.weight, classifier.fc_norm.bias, 1e-12
        )
    assert torch.allclose(ours, expected, atol=1e-4)


def test_bad_hf_folders_are_named(tmp_path):
    model = randomised(transformers.VideoMAEModel(tiny_config(use_mean_pooling=False)))
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="contradicts config.json"):
        load_encoder(tmp_path / "hf", arch={"num_heads": 8})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_encoder(tmp_path / "empty")
    # Weights without their config: the heads and norms cannot be known.
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "weights.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="without their config.json"):
        load_encoder(tmp_path / "alone" / "weights.safetensors")
    # A layer the config promises but the weights lack.
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if "layer.1.attention.attention.key" not in k},
        tmp_path / "hf" / "model.safetensors",
    )
    with pytest.raises(CheckpointError, match=r"missing keys \['encoder.layer.1.attention.attention.key.weight'\]"):
        load_encoder(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(CheckpointError, match="model_type 'vit'"):
        load_encoder(tmp_path / "hf")


def cache_then_student(tmp_path, synthetic_set, teacher, **sections):
    """`salt cache-latents --teacher <teacher>` on 4 synthetic videos, then a 2-step student from
    that cache (the student config's other sections from tests/test_student.py); (manifest, metrics)."""
    from click.testing import CliRunner

    from salt.cli import main
    from salt.latents import open_cache
    from salt.training.student import run_student
    from tests.test_student import records, student_config

    result = CliRunner().invoke(
        main,
        [
            "cache-latents",
            "--teacher",
            str(teacher),
            "--data",
            str(synthetic_set / "train.csv"),
            "--out",
            str(tmp_path / "cache"),
            "--views",
            "1",
            "--max-videos",
            "4",
            "--shard-videos",
            "2",
            "--workers",
            "0",
            "--precision",
            "fp32",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    sections = dict(
        cache={"path": str(tmp_path / "cache")},
        teacher=str(teacher),
        optim={"steps": 2, "warmup_steps": 1},
        run={"out_dir": str(tmp_path / "run"), "checkpoint_every": 2},
        **sections,
    )
    run_student(str(student_config(tmp_path / "a", tmp_path, **sections)), [])
    return open_cache(tmp_path / "cache").manifest, records(tmp_path / "run")


def test_hf_videomae_teacher_end_to_end_cache_then_student(tmp_path, synthetic_set):
    """`salt cache-latents --teacher <HF folder>`, then a student trained from that cache."""
    config = transformers.VideoMAEConfig(
        image_size=32,
        patch_size=16,
        num_frames=8,
        tubelet_size=2,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        use_mean_pooling=False,
    )
    randomised(transformers.VideoMAEModel(config)).save_pretrained(tmp_path / "hf")
    manifest, metrics = cache_then_student(tmp_path, synthetic_set, tmp_path / "hf")
    assert manifest.teacher["arch"]["pos_embed"] == "sincos1d" and manifest.geometry["frames"] == 8
    assert len(metrics) == 2
