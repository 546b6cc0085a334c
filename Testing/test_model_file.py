"""Model files: safetensors + JSON card round trip, and refusal of everything else."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_tiny_model_file
from lckd.ensemble import NetworkEnsemble
from lckd.errors import ModelFileError
from lckd.model_file import CARD_KEY, FORMAT_VERSION, ModelCard, load_model, read_card, save_model
from lckd.network import PRESETS, LCKDNet


def test_round_trip_keeps_weights_and_card(tmp_path):
    validation = {"subsets": {"flair+t1ce": {"ET": 0.5, "TC": 0.6, "WT": 0.8}}, "average": {"ET": 0.5}}
    path = make_tiny_model_file(tmp_path / "m.safetensors", seed=3, method="metakd",
                                importance={"flair": 0.3, "t1": 0.1, "t1ce": 0.5, "t2": 0.1}, validation=validation)
    torch.manual_seed(3)
    original = LCKDNet(PRESETS["tiny"])
    model, card = load_model(path)
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
    assert card.method == "metakd" and card.importance["t1ce"] == 0.5
    assert card.expected_dice("flair+t1ce") == {"ET": 0.5, "TC": 0.6, "WT": 0.8}
    assert card.expected_dice("t2") is None
    assert read_card(path) == card
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_an_ensemble_file_holds_every_network_and_says_so(tmp_path, tiny_model):
    networks = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        networks.append(LCKDNet(PRESETS["tiny"]))
    card = ModelCard(preset="tiny", network=PRESETS["tiny"].to_dict(), tile_size=[32, 64, 64], name="pair")
    path = save_model(tmp_path / "pair.safetensors", NetworkEnsemble(networks), card)
    model, loaded = load_model(path)
    assert isinstance(model, NetworkEnsemble) and len(model.members) == 2
    for network, member in zip(networks, model.members):
        for name, tensor in network.state_dict().items():
            torch.testing.assert_close(member.state_dict()[name], tensor)
    assert loaded.members == 2 and loaded.format_version == FORMAT_VERSION == 2 and card.members == 1
    assert read_card(tiny_model).format_version == 1  # one network: read by programs older than ensembles
    with pytest.raises(ModelFileError, match="do not match preset"):  # a card that claims one network too many
        load_model(_rewrite_card(path, tmp_path / "three.safetensors", members=3))
    with pytest.raises(ModelFileError, match="field members"):
        read_card(_rewrite_card(path, tmp_path / "none.safetensors", members=0))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_pickles_are_refused_whatever_the_extension(tmp_path, suffix):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    plain = tmp_path / f"plain{suffix}"
    plain.write_bytes(pickle.dumps(Exploit()))
    zipped = tmp_path / f"zipped{suffix}"
    torch.save({"weights": torch.zeros(2)}, zipped)
    for path in (plain, zipped):
        with pytest.raises(ModelFileError, match="never loaded"):
            load_model(path)
    assert not marker.exists()


def test_random_bytes_truncation_and_foreign_safetensors_are_refused(tmp_path, tiny_model):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ModelFileError, match="not an LCKD model"):
        load_model(noise)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(tiny_model.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelFileError, match="without an LCKD model card"):
        load_model(foreign)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def _rewrite_card(source, destination, **changes):
    """Copy a model file with some card fields changed (header rewritten, weights kept)."""
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    card = json.loads(header["__metadata__"][CARD_KEY])
    card.update(changes)
    header["__metadata__"][CARD_KEY] = json.dumps(card)
    encoded = json.dumps(header).encode()
    destination.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])
    return destination


def test_preset_mismatch_and_newer_format_are_refused(tmp_path, tiny_model):
    small = PRESETS["small"].to_dict()
    with pytest.raises(ModelFileError, match="do not match preset"):
        load_model(_rewrite_card(tiny_model, tmp_path / "a.safetensors", preset="small", network=small))
    with pytest.raises(ModelFileError, match="network settings differ"):
        load_model(_rewrite_card(tiny_model, tmp_path / "b.safetensors", preset="small"))
    with pytest.raises(ModelFileError, match="newer"):
        read_card(_rewrite_card(tiny_model, tmp_path / "c.safetensors", format_version=99))
    with pytest.raises(ModelFileError, match="not a multiple"):
        load_model(_rewrite_card(tiny_model, tmp_path / "d.safetensors", tile_size=[30, 64, 64]))


def test_review_thresholds_are_read_back_and_malformed_ones_refused(tmp_path, tiny_model):
    thresholds = {"ET": 0.9, "TC": 0.85, "WT": 0.5}
    assert read_card(_rewrite_card(tiny_model, tmp_path / "a.safetensors", review_below=thresholds)).review_below \
        == thresholds
    assert read_card(tiny_model).review_below is None
    for bad in ({"ET": 0.9, "TC": 0.85}, {"ET": 0.9, "TC": 0.85, "WT": 1.5}, {"ET": "high", "TC": 0.8, "WT": 0.5}, 0.9):
        with pytest.raises(ModelFileError, match="field review_below"):
            read_card(_rewrite_card(tiny_model, tmp_path / "b.safetensors", review_below=bad))


def test_save_refuses_a_card_that_does_not_describe_the_model(tmp_path):
    model = LCKDNet(PRESETS["tiny"])
    card = ModelCard(preset="small", network=PRESETS["small"].to_dict(), tile_size=[32, 64, 64])
    with pytest.raises(ModelFileError):
        save_model(tmp_path / "x.safetensors", model, card)
    assert not (tmp_path / "x.safetensors").exists()


def test_loading_skips_random_initialisation_only_while_it_builds(tmp_path, tiny_model):
    originals = {name: getattr(torch.nn.init, name) for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_")}
    load_model(tiny_model)
    with pytest.raises(ModelFileError, match="do not match preset"):
        load_model(_rewrite_card(tiny_model, tmp_path / "a.safetensors", preset="small",
                                 network=PRESETS["small"].to_dict()))
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    torch.manual_seed(0)
    first = LCKDNet(PRESETS["tiny"]).encoder.stem[0].weight.detach()
    torch.manual_seed(1)
    assert not torch.equal(first, LCKDNet(PRESETS["tiny"]).encoder.stem[0].weight)
    assert float(first.std()) > 0
