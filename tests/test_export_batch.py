"""A batch-1 example must not freeze the exported graph at batch 1 (torch.export's 0/1
specialisation), on the exporter that is tried first: the search exports with batch-1 examples and
then times and scores at batch 8 / 64."""

import numpy as np
import pytest
import torch

from autocompress.targets.onnxruntime import session
from autocompress.export.onnx import export_onnx
from zoo import batch_of, build


@pytest.mark.parametrize("name", ["transformer", "gru", "plain_cnn"])
def test_dynamo_export_from_a_batch_one_example_runs_at_batch_eight(name, tmp_path):
    model, _ = build(name)
    model.eval()
    path = export_onnx(model, batch_of(name, 1), tmp_path / "m.onnx", exporter="dynamo")
    x = batch_of(name, 8, seed=1)
    sess = session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
