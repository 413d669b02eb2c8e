"""compress()'s options come in three groups; the flat keywords of earlier versions still work."""

from __future__ import annotations

import pytest

from autocompress.search import ResultOptions, SearchOptions, TrainingOptions
from autocompress.search.options import resolve


def test_groups_as_dataclasses_or_mappings():
    s, t, r = resolve(SearchOptions(techniques=["prune"], workers=2), {"quick": True}, None, {})
    assert s.techniques == ["prune"] and s.workers == 2 and t.quick and r == ResultOptions()
    with pytest.raises(TypeError, match=r"training=.*unknown option\(s\) \['quik'\]"):
        resolve(None, {"quik": True}, None, {})
    with pytest.raises(TypeError, match="expected SearchOptions or a mapping"):
        resolve(["prune"], None, None, {})


def test_flat_keywords_map_onto_their_group_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"search=SearchOptions\(seed\), training=TrainingOptions\(quick\), results=ResultOptions\(out_dir\)"):
        s, t, r = resolve(None, None, None, {"out_dir": "runs/x", "quick": True, "seed": 3})
    assert r.out_dir == "runs/x" and t.quick and s.seed == 3 and t == TrainingOptions(quick=True)
    with pytest.raises(TypeError, match=r"'out_dir' given both on its own and in results="):
        resolve(None, None, {"title": "t"}, {"out_dir": "x"})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'techniqes'.*did you mean 'techniques'"):
        resolve(None, None, None, {"techniqes": ["prune"]})
