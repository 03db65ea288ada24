"""Every user mistake: one line naming the file or option, exit status 2, nothing overwritten."""


import pytest

from tests.cli.conftest import TINY, run
from tests.fixtures.datasets import make_pg


def _error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_missing_data_root(tmp_path):
    r = run("buffer", "--dataset", "crc", "--data-root", tmp_path / "nope", *TINY, "--out", tmp_path / "o", ok=False)
    _error(r, "nope")
    assert not (tmp_path / "o").exists()


def test_unknown_dataset_and_arch(tmp_path):
    _error(run("buffer", "--dataset", "imagenet", *TINY, "--out", tmp_path / "o", ok=False), "imagenet")
    r = run("buffer", "--dataset", "crc", "--data-root", tmp_path, "--arch", "lenet", "--out", tmp_path / "o", ok=False)
    _error(r, "lenet")


def test_pg_wrong_csv_columns(tmp_path):
    root = make_pg(tmp_path / "pg", slides_per_class=3, patches_per_slide=1, size=64)
    (root / "captions.csv").write_text("slide,label\nA,B\n")
    r = run("data", "stats", "--dataset", "pg", "--data-root", root, "--res", "16", "--cache-dir", tmp_path / "c",
            "--no-progress", ok=False)
    _error(r, "captions.csv")


def test_pg_corrupt_image(tmp_path):
    root = make_pg(tmp_path / "pg", slides_per_class=3, patches_per_slide=1, size=64)
    bad = min((root / "patches_captions").iterdir())
    bad.write_bytes(b"not a jpeg")
    r = run("data", "stats", "--dataset", "pg", "--data-root", root, "--res", "16", "--cache-dir", tmp_path / "c",
            "--no-progress", ok=False)
    _error(r, bad.name)


def test_class_with_fewer_images_than_ipc(store, tmp_path):
    _error(run("distill", "--buffer", store, "--method", "random", "--ipc", "500", "--out", tmp_path / "o",
               "--no-progress", ok=False), "--ipc 500")


def test_epochs_beyond_the_store(store, tmp_path):
    r = run("distill", "--buffer", store, "--expert-epochs", "2", "--max-start-epoch", "3", "--out", tmp_path / "o",
            "--no-progress", ok=False)
    _error(r, "--expert-epochs 2", "--max-start-epoch 3", "3")
    assert not (tmp_path / "o").exists()


def test_not_a_store(tmp_path):
    (tmp_path / "b").mkdir()
    _error(run("distill", "--buffer", tmp_path / "b", "--out", tmp_path / "o", ok=False), "meta.json")
    (tmp_path / "b" / "meta.json").write_text("{broken")
    _error(run("distill", "--buffer", tmp_path / "b", "--out", tmp_path / "o", ok=False), "not valid JSON")


def test_store_from_another_dataset(store, tmp_path):
    # the store says 2 classes at 16 px; pointing it at a PG folder (3 classes) must fail clearly
    pg = make_pg(tmp_path / "pg", slides_per_class=3, patches_per_slide=1, size=64)
    r = run("distill", "--buffer", store, "--method", "random", "--ipc", "1", "--data-root", pg,
            "--out", tmp_path / "o", "--no-progress", ok=False)
    assert r.exit_code == 2 and r.output.count("error:") == 1


def test_nan_loss_keeps_the_best_synset(store, tmp_path):
    out = tmp_path / "nan"
    r = run("distill", "--buffer", store, "--ipc", "2", "--syn-steps", "3", "--expert-epochs", "1",
            "--max-start-epoch", "2", "--iterations", "6", "--eval-it", "1", "--eval-epochs", "2",
            "--lr-img", "1e30", "--lr-lr", "1e30", "--no-progress", "--out", out, ok=False)
    _error(r, "--lr-img")
    assert (out / "synset" / "synset.safetensors").is_file()


def test_existing_result_is_not_overwritten(store, tmp_path):
    out = tmp_path / "r"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "1", "--out", out, "--no-progress")
    before = (out / "synset" / "synset.safetensors").read_bytes()
    r = run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--out", out, "--no-progress", ok=False)
    _error(r, "--out", "ipc")
    assert (out / "synset" / "synset.safetensors").read_bytes() == before
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--out", out, "--no-progress", "--overwrite")
    assert (out / "synset" / "synset.safetensors").read_bytes() != before


def test_out_that_is_not_a_run_dir(store, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    r = run("distill", "--buffer", store, "--method", "random", "--out", tmp_path / "mine", "--overwrite", ok=False)
    _error(r, "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_eval_missing_synset_and_corrupt_synset(store, tmp_path):
    _error(run("eval", "--synset", tmp_path / "none", "--out", tmp_path / "e", ok=False), "none")
    out = tmp_path / "r"
    run("distill", "--buffer", store, "--method", "random", "--ipc", "1", "--out", out, "--no-progress")
    (out / "synset" / "synset.safetensors").write_bytes(b"garbage")
    _error(run("eval", "--synset", out, "--out", tmp_path / "e", ok=False), "synset.safetensors")


def test_bad_config_key(store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ipcs: 3\n")
    _error(run("distill", "--config", cfg, "--buffer", store, "--out", tmp_path / "o", ok=False), "ipcs")


def test_missing_gpu(store, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    _error(run("distill", "--buffer", store, "--device", "cuda", "--out", tmp_path / "o", ok=False), "--device")


def test_offload_history_needs_a_reverse_engine(store, tmp_path):
    from tests.cli.test_pipeline import DISTILL

    r = run("distill", "--buffer", store, *DISTILL, "--engine", "full", "--offload-history", "--out", tmp_path / "o",
            ok=False)
    _error(r, "--offload-history", "adjoint")


def test_num_threads_below_one(tmp_path):
    r = run("eval", "--synset", tmp_path, "--num-threads", "0", "--out", tmp_path / "o", ok=False)
    assert r.exit_code == 2 and "'--num-threads': 0 is not in the range x>=1" in r.output, r.output
    assert not (tmp_path / "o").exists()
