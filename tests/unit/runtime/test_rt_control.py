"""The control channel's framing over a real socket pair: kinds, headers, tensors, bad frames."""
import socket
import struct

import pytest
import torch

from galaxy.runtime import control


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    a, b = control.Channel(left, "left"), control.Channel(right, "right")
    yield a, b
    a.close()
    b.close()


def test_a_message_round_trips_with_its_tensors(pair):
    a, b = pair
    base = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    a.send(control.RUN, {"epoch": 2, "id": 7}, {"input_ids": base, "view": base[1:]})
    message = b.receive(timeout_s=5)
    assert message.kind == control.RUN and message.header == {"epoch": 2, "id": 7}
    assert torch.equal(message.tensors["input_ids"], base) and torch.equal(message.tensors["view"], base[1:])
    a.send(control.HEARTBEAT)
    assert b.receive(timeout_s=5) == control.Message(control.HEARTBEAT, {}, {})


def test_silence_closed_and_garbage_are_control_errors(pair):
    a, b = pair
    with pytest.raises(control.ControlError, match="nothing within the timeout"):
        b.receive(timeout_s=0.2)
    a.sock.sendall(struct.pack("!II", 1 << 30, 0))
    with pytest.raises(control.ControlError, match="not a Galaxy control connection"):
        b.receive(timeout_s=5)
    a.close()
    with pytest.raises(control.ControlError, match="closed the connection"):
        b.receive(timeout_s=5)
