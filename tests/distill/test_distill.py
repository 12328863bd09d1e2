"""Knowledge distillation: the divergences (against TRL's GKD loss and by hand, values and
gradients), layer-dropped students, the distillation step in classification / SFT / image runs
(cached and live teachers, feature matching through a projection, exact resume, every method),
and the one-line errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import one_error_line, results, run_cli, tiny_overrides, train_and_kill
from tests.tasks.test_image import _overrides as image_overrides
from tests.tasks.test_image import cnn_weights, colour_folder  # noqa: F401 -- fixtures
from tunelab.cli import main
from tunelab.distill.losses import distillation_loss, divergence
from tunelab.methods import METHODS


def events(run: Path, event: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == event]


# ---------------------------------------------------------------------------- losses

def _logits(seed: int = 0, n: int = 6, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    def draw() -> torch.Tensor:
        return torch.randn(n, c, generator=g, dtype=torch.float64) * 2

    return draw(), draw()


@pytest.mark.parametrize("kind, beta", [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5), ("jsd", 0.1),
                                        ("jsd", 0.9)])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_divergences_match_trl_generalized_jsd(kind, beta, temperature) -> None:
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    student, teacher = _logits()
    student.requires_grad_(True)
    ours = divergence(student, teacher, kind, temperature, beta if kind == "jsd" else 0.5)
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=temperature)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    (g_ours,) = torch.autograd.grad(ours, student)
    (g_theirs,) = torch.autograd.grad(GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta,
                                                                      temperature=temperature), student)
    assert torch.allclose(g_ours, g_theirs.to(g_ours), atol=1e-6)


def test_forward_kl_by_hand_and_its_closed_form_gradient() -> None:
    s, t = [0.5, -1.0, 2.0], [1.0, 0.0, -0.5]
    temp = 2.0

    def softmax(z):
        e = [math.exp(x / temp) for x in z]
        return [x / sum(e) for x in e]

    p, q = softmax(t), softmax(s)
    by_hand = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    student = torch.tensor([s], dtype=torch.float64, requires_grad=True)
    loss = distillation_loss(student, torch.tensor([t], dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                             alpha=0.0, temperature=temp)
    assert loss.item() == pytest.approx(temp ** 2 * by_hand, abs=1e-9)
    loss.backward()
    # d/dz_s [T^2 KL(p || softmax(z_s / T))] = T (q - p)   (Hinton et al., 2015, eq. 2)
    assert student.grad[0].tolist() == pytest.approx([temp * (qi - pi) for pi, qi in zip(p, q)], abs=1e-9)


def test_alpha_mixes_the_task_loss_and_the_teacher_term() -> None:
    student, teacher = _logits(1)
    task = torch.tensor(0.7, dtype=torch.float64)
    kd = divergence(student, teacher, "forward_kl", 3.0)
    for alpha in (0.0, 0.3, 1.0):
        got = distillation_loss(student, teacher, task, alpha=alpha, temperature=3.0)
        assert got.item() == pytest.approx(alpha * 0.7 + (1 - alpha) * 9.0 * kd.item(), abs=1e-9)
    assert divergence(teacher, teacher, "reverse_kl").item() == pytest.approx(0.0, abs=1e-12)
    assert divergence(teacher, teacher, "jsd").item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------- smaller students

def test_every_kth_layer_ends_with_the_last() -> None:
    from tunelab.models.shrink import every_kth

    assert every_kth(6, 3) == [1, 3, 5]
    assert every_kth(30, 10) == [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    assert every_kth(6, 1) == [5] and every_kth(4, 4) == [0, 1, 2, 3]


def test_a_bert_student_keeps_the_teachers_layers(tiny_bert_dir) -> None:
    from transformers import BertConfig, BertModel

    from tunelab.models.shrink import shrink

    torch.manual_seed(0)
    teacher = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=32)).eval()
    student = BertModel(teacher.config)
    student.load_state_dict(teacher.state_dict())
    assert shrink(student, 2, None) == [1, 3]
    assert student.config.num_hidden_layers == 2 and len(student.encoder.layer) == 2
    for mine, theirs in zip(student.encoder.layer, [teacher.encoder.layer[1], teacher.encoder.layer[3]]):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    ids = torch.tensor([[1, 5, 7, 2]])
    hidden = teacher.embeddings(ids)  # the student is the teacher's layers 1 and 3 applied in turn
    for i in (1, 3):
        out = teacher.encoder.layer[i](hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(student.eval()(ids).last_hidden_state, hidden, atol=1e-5)


def test_a_llama_student_renumbers_its_cache_layers_and_generates(tiny_llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    from tunelab.models.shrink import shrink

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    n = model.config.num_hidden_layers
    assert shrink(model, None, [n - 1]) == [n - 1]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0]
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_keep_layers_errors(tiny_bert_dir) -> None:
    from tunelab.errors import UserError
    from tunelab.models.shrink import kept_indices

    with pytest.raises(UserError, match="index 9 is outside 0..5"):
        kept_indices(6, None, [0, 9])
    with pytest.raises(UserError, match="distinct indices in increasing order"):
        kept_indices(6, None, [3, 1])
    with pytest.raises(UserError, match="more than the model's 6 blocks"):
        kept_indices(6, 7, None)


def test_a_cnn_student_drops_only_shape_keeping_blocks() -> None:
    import torchvision

    from tunelab.errors import UserError
    from tunelab.models.shrink import shrink

    model = torchvision.models.mobilenet_v2()
    model.tunelab_layer_list = "features"
    with pytest.raises(UserError, match="change the shape of their input; blocks that can be dropped: "
                                        r"\[3, 5, 6, 8, 9, 10, 12, 13, 15, 16\]"):
        shrink(model, None, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17])  # drops 18
    keep = [i for i in range(19) if i not in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    assert shrink(model, None, keep) == keep and len(model.features) == 9
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


# ---------------------------------------------------------------------------- classification

@pytest.fixture(scope="module")
def teacher_run(tiny_bert_dir, reviews_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    args = tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **{"method.name": "full", "train.epochs": 2,
                                                                 "name": "teacher"})
    assert main(["train", *args]) == 0
    return out / "teacher"


def student_args(tiny_bert_dir, reviews_jsonl, out, name, teacher, **extra) -> list[str]:
    base = {"name": name, "distill.teacher": str(teacher), "model.num_layers": 1, "train.epochs": 1,
            "train.max_steps": 6, "distill.temperature": 2.0}
    base.update(extra)
    return ["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, out, **base)]


def test_a_distilled_classifier_trains_caches_its_teacher_and_reloads(teacher_run, tiny_bert_dir, reviews_jsonl,
                                                                      tmp_path, capsys) -> None:
    assert main(student_args(tiny_bert_dir, reviews_jsonl, tmp_path, "s", teacher_run)) == 0
    out = capsys.readouterr().out
    assert "cached the teacher's outputs for" in out
    run = tmp_path / "s"
    trains = events(run, "train")
    assert trains and all({"task_loss", "kd_loss"} <= set(t) for t in trains) and trains[0]["kd_loss"] > 0
    from tunelab.pipeline import load_run

    student = load_run(str(run)).model  # rebuilt from the run alone: the 1-layer student again
    assert len(student.bert.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(results(run)["test"]["accuracy"])


def test_alpha_one_is_plain_training_and_caching_changes_nothing(teacher_run, tiny_bert_dir, reviews_jsonl,
                                                                  tmp_path, capsys) -> None:
    plain = ["train", *tiny_overrides(tiny_bert_dir, reviews_jsonl, tmp_path, **{
        "name": "plain", "model.num_layers": 1, "train.epochs": 1, "train.max_steps": 6})]
    assert main(plain) == 0
    assert main(student_args(tiny_bert_dir, reviews_jsonl, tmp_path, "a1", teacher_run, **{"distill.alpha": 1.0})) == 0
    a, b = (load_file(str(tmp_path / n / "model" / "weights.safetensors")) for n in ("plain", "a1"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the teacher's term weighs 0
    for name, cache in (("cached", "true"), ("live", "false")):
        assert main(student_args(tiny_bert_dir, reviews_jsonl, tmp_path, name, teacher_run,
                                 **{"distill.cache_teacher": cache, "distill.alpha": 0.2})) == 0
    c, d = (load_file(str(tmp_path / n / "model" / "weights.safetensors")) for n in ("cached", "live"))
    assert all(torch.allclose(c[k], d[k], atol=1e-5) for k in c)
    assert not all(torch.allclose(a[k], c[k], atol=1e-4) for k in a)  # and the teacher does change training


def test_feature_matching_trains_a_projection_that_is_not_saved(teacher_run, tiny_bert_dir, reviews_jsonl,
                                                                tmp_path, capsys) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    narrow = tmp_path / "narrow-bert"  # hidden 16: the teacher's features are 32 wide
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=128)).save_pretrained(narrow)
    tok.save_pretrained(narrow)
    args = student_args(narrow, reviews_jsonl, tmp_path, "f", teacher_run,
                        **{"distill.hidden_weight": 1.0, "method.name": "full", "model.num_layers": 2})
    assert main(args) == 0, capsys.readouterr().err
    trains = events(tmp_path / "f", "train")
    assert trains[0]["feature_mse"] > 0 and trains[-1]["feature_mse"] < trains[0]["feature_mse"]
    saved = load_file(str(tmp_path / "f" / "model" / "weights.safetensors"))
    assert saved and not any("distill" in k for k in saved)
    ckpt = next((tmp_path / "f" / "checkpoints").glob("*/*.safetensors"))
    assert any("tunelab_distill_projection" in k for k in load_file(str(ckpt)))  # resume needs it
    assert main(["eval", str(tmp_path / "f")]) == 0


def test_a_killed_distillation_resumes_to_identical_weights(teacher_run, tiny_bert_dir, reviews_jsonl,
                                                            tmp_path) -> None:
    extra = {"train.max_steps": 10, "train.save_steps": 2, "train.eval_strategy": "no", "distill.hidden_weight": 0.5}
    a = run_cli(*student_args(tiny_bert_dir, reviews_jsonl, tmp_path / "a", "run", teacher_run, **extra))
    assert a.returncode == 0, a.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    train_and_kill(student_args(tiny_bert_dir, reviews_jsonl, tmp_path / "b", "run", teacher_run, **extra)[1:],
                   run_b, at_step=4)
    assert not (run_b / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_cli("train", "--resume", str(run_b))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    wa = load_file(str(tmp_path / "a" / "run" / "model" / "weights.safetensors"))
    wb = load_file(str(run_b / "model" / "weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


METHOD_OPTIONS = {"freeze": {"method.top_layers": 1}, "prompt_tuning": {"method.num_virtual_tokens": 4},
                  "prefix_tuning": {"method.num_virtual_tokens": 4}, "ptuning_v2": {"method.num_virtual_tokens": 4}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_distils_saves_and_reloads(method, teacher_run, tiny_bert_dir, reviews_jsonl, tmp_path,
                                                capsys) -> None:
    extra = {"method.name": method, **METHOD_OPTIONS.get(method, {}), "train.max_steps": 2,
             "model.num_layers": 2}
    assert main(student_args(tiny_bert_dir, reviews_jsonl, tmp_path, method, teacher_run, **extra)) == 0, \
        capsys.readouterr().err
    r = results(tmp_path / method)
    assert r["method"] == [method] and 0 < r["params"]["trainable"] <= r["params"]["total"]
    assert events(tmp_path / method, "train")[0]["kd_loss"] >= 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / method)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(r["test"]["accuracy"], abs=1e-9)


# ---------------------------------------------------------------------------- SFT and images

def test_a_causal_lm_student_distils_from_a_teacher_model(tiny_llama_dir, tmp_path, capsys) -> None:
    """End to end with the generalised JSD (every divergence's value and gradient is checked against
    TRL above; this checks the token positions and the live teacher)."""
    divergence_kind = "jsd"
    extra = {"task.name": "sft", "data.source": "wordnet_instruct", "data.max_train_samples": 16,
             "train.max_steps": 3, "train.batch_size": 4, "data.max_length": 48, "method.name": "lora",
             "distill.divergence": divergence_kind, "distill.hidden_weight": 0.1}
    args = ["train", *tiny_overrides(tiny_llama_dir, Path("wordnet_instruct"), tmp_path, **{
        **extra, "distill.teacher": str(tiny_llama_dir), "model.keep_layers": "[1]", "name": "s"})]
    assert main(args) == 0, capsys.readouterr().err
    trains = events(tmp_path / "s", "train")
    assert trains and trains[0]["kd_loss"] > 0 and "cached the teacher" not in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "s")]) == 0


def test_an_image_student_distils_from_an_image_teacher(cnn_weights, colour_folder, tmp_path, capsys) -> None:  # noqa: F811
    assert main(["train", *image_overrides(cnn_weights, colour_folder, tmp_path, name="t", **{"train.epochs": 1})]) == 0
    keep = "[0,1,2,4,7,11,14,17,18]"  # MobileNetV2 without its repeated (shape-keeping) blocks
    args = image_overrides(cnn_weights, colour_folder, tmp_path, name="s", **{
        "distill.teacher": str(tmp_path / "t"), "model.keep_layers": keep, "train.epochs": 1})
    assert main(["train", *args]) == 0, capsys.readouterr().err
    assert "cached the teacher's outputs" in capsys.readouterr().out
    assert results(tmp_path / "s")["params"]["total"] < results(tmp_path / "t")["params"]["total"]
    assert main(["eval", str(tmp_path / "s")]) == 0


# ---------------------------------------------------------------------------- user errors

def test_teacher_errors_are_one_line_and_write_nothing(teacher_run, tiny_bert_dir, reviews_jsonl, tmp_path,
                                                       capsys) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teacher_run, unfinished)
    (unfinished / "results.json").unlink()
    other_labels = tmp_path / "three.jsonl"
    rows = [json.loads(line) for line in reviews_jsonl.read_text().splitlines()]
    other_labels.write_text("".join(json.dumps({"text": r["text"], "label": ["a", "b", "c"][i % 3]}) + "\n"
                                    for i, r in enumerate(rows)))
    cases = [
        ({"distill.teacher": str(tmp_path / "nope")}, "is neither a finished run nor a model"),
        ({"distill.teacher": str(unfinished)}, "has not finished (no results.json)"),
        ({"distill.teacher": str(tiny_bert_dir)}, "has no trained head for these labels"),
        ({"task.name": "regression", "data.label_column": "label"}, "task.name=regression runs cannot be distilled"),
        ({"train.cache_frozen_trunk": "true", "method.name": "freeze", "method.top_layers": 1},
         "cannot be combined"),
    ]
    for i, (extra, fragment) in enumerate(cases):
        teacher = extra.pop("distill.teacher", teacher_run)
        args = student_args(tiny_bert_dir, reviews_jsonl, tmp_path, f"bad{i}", teacher, **extra)
        assert main(args) == 2, fragment
        one_error_line(capsys.readouterr().err, fragment)
        assert not (tmp_path / f"bad{i}").exists()
    args = ["train", *tiny_overrides(tiny_bert_dir, other_labels, tmp_path, **{
        "name": "labels", "distill.teacher": str(teacher_run), "train.max_steps": 1})]
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "predicts labels ['fresh', 'rotten'] but the student's are ['a', 'b', 'c']")
    assert not (tmp_path / "labels").exists()


def test_a_teacher_of_another_task_or_vocabulary_is_refused(teacher_run, tiny_llama_dir, tmp_path, capsys) -> None:
    base = {"task.name": "sft", "data.source": "wordnet_instruct", "data.max_train_samples": 8, "train.max_steps": 1,
            "data.max_length": 48}
    assert main(["train", *tiny_overrides(tiny_llama_dir, Path("wordnet_instruct"), tmp_path, **{
        **base, "name": "x", "distill.teacher": str(teacher_run)})]) == 2
    one_error_line(capsys.readouterr().err, "is a task.name=classification run; the student is a task.name=sft run")
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_llama_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<brand-new-token>"])
    tok.save_pretrained(other)
    assert main(["train", *tiny_overrides(tiny_llama_dir, Path("wordnet_instruct"), tmp_path, **{
        **base, "name": "y", "distill.teacher": str(other)})]) == 2
    one_error_line(capsys.readouterr().err, "has a different vocabulary")
    assert main(["train", *tiny_overrides(tiny_llama_dir, Path("wordnet_instruct"), tmp_path, **{
        **base, "name": "z", "distill.teacher": str(tiny_llama_dir), "distill.cache_teacher": "true"})]) == 2
    one_error_line(capsys.readouterr().err, "distill.cache_teacher=true")
    assert not any((tmp_path / n).exists() for n in "xyz")



