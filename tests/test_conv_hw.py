"""A conv digits run on the hardware side: emulator == Lava fixed_pt bit for bit, for graded input
and rate input (a conv with weight_exp 0 runs as a Lava Conv, one below as a Sparse)."""

import pytest

from hardware import deploy, loihi
from spikeprop.cli import main


@pytest.mark.parametrize("encoding", ["direct", "rate"])
def test_conv_run_verifies_bit_exact_on_lava(tmp_path, encoding):
    run = tmp_path / "run"
    assert main(["train", "--model", "conv", "--encoding", encoding, "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 0
    fnet, _ = deploy.quantize_deployment(deploy.load_deployment(run), run)
    # the process follows weight_exp (Conv at 0, Sparse below); which one a 1-epoch run gets depends on its weights
    assert loihi.lava_process(fnet.layers[0]) == ("Conv" if fnet.layers[0].weight_exp == 0 else "Sparse")
    loihi.save(fnet, tmp_path / "net.npz")
    assert [la.synapse for la in loihi.load(tmp_path / "net.npz").layers] == [la.synapse for la in fnet.layers]
    report = deploy.verify_run(run, limit=10)
    assert report["bit_exact"] and report["readout_v_identical_emulator_vs_lava_fixed_pt"]
    assert report["identical_spike_trains"]["emulator_vs_lava_fixed_pt"] == [1.0, 1.0]


@pytest.mark.parametrize("spec", ["3c3", "2c3s2", "2c5s2p1", "4c2s1p1"])
def test_conv_matrix_equals_torch_conv2d(spec):
    # the unrolled kernel Lava's Sparse gets (a conv needing a negative weight_exp) is PyTorch's conv
    import numpy as np
    import torch
    from torch.nn import functional as F

    from hardware.lava import conv_matrix
    from spikeprop.layers import parse_layers

    syn = parse_layers(spec, (2, 7, 6))[0]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(syn.weight_shape, generator=g, dtype=torch.float64)
    s = torch.randn((3, *syn.in_shape), generator=g, dtype=torch.float64)
    ref = F.conv2d(s, w, stride=syn.stride, padding=syn.padding).flatten(1)
    m = conv_matrix(syn, w.numpy())
    np.testing.assert_allclose(s.flatten(1).numpy() @ m.T, ref.numpy(), rtol=0, atol=1e-12)


def test_conv_nets_are_refused_by_the_nir_export_with_a_reason():
    from hardware import nir
    from spikeprop import SpikepropError
    from spikeprop.layers import parse_layers
    from spikeprop.network import Network
    from spikeprop.neurons import LIFParams

    net = Network(layers=parse_layers("2c3s2,5", (1, 8, 8)), n_classes=3, params=LIFParams())
    with pytest.raises(SpikepropError, match="convolutional layers .*2c3s2.* cannot be exported to NIR"):
        nir.to_nir(net)
