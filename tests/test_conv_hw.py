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
