"""The no-globals unpickler: plain data loads, any global (or persistent id) is refused."""

import os
import pickle
from fractions import Fraction

import pytest

from genloom.data.safe_pickle import safe_load, safe_loads
from genloom.errors import UserError

PLAIN = [["标题", "内容"], {"k": 1, "v": [1.5, None, True]}, (1, -2, 3.25), "", 10**30]


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips(tmp_path, protocol):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(PLAIN, protocol=protocol))
    assert safe_load(path) == PLAIN


def test_bytes_load_only_where_no_global_is_needed():
    assert safe_loads(pickle.dumps([b"\x00\xff"], protocol=3)) == [b"\x00\xff"]  # BINBYTES
    with pytest.raises(UserError, match=r"_codecs\.encode"):  # protocols 0-2 need a global
        safe_loads(pickle.dumps([b"\x00\xff"], protocol=2))


def test_set_loads_only_where_no_global_is_needed():
    assert safe_loads(pickle.dumps({1, 2}, protocol=4)) == {1, 2}  # EMPTY_SET opcode
    with pytest.raises(UserError, match=r"\.set; refusing"):  # protocol 2 names a global set
        safe_loads(pickle.dumps({1, 2}, protocol=2))


def test_crafted_global_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    # protocol-0 GLOBAL os.system + REDUCE: the stock unpickler would run the shell command
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=r"os\.system; refusing") as e:
        safe_load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [os.system, Fraction(1, 2), pickle.Pickler])
def test_stack_global_is_refused(obj):
    data = pickle.dumps(obj, protocol=4)  # STACK_GLOBAL opcode
    with pytest.raises(UserError, match="refusing to load"):
        safe_loads(data)


def test_broken_pickles_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a readable pickle"):
        safe_loads(pickle.dumps(PLAIN)[:-5])  # truncated
    with pytest.raises(UserError, match="not a readable pickle"):
        safe_loads(b"Pfoo\n.")  # persistent id: no persistent_load, so refused
    with pytest.raises(UserError, match="not a readable pickle"):
        safe_loads(b"")
    with pytest.raises(UserError, match="cannot read"):
        safe_load(tmp_path / "absent.pkl")
