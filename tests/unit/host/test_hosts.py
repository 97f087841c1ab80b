"""The hosts file: parsing, its errors, and the ssh/scp command lines it makes."""
import pytest

from galaxy.host.hosts import HostsFile, HostsFileError, deployed_path

GOOD = '''
token_file = "cluster.token"
known_hosts = "known_hosts"
[devices.desktop]
address = "10.0.0.1"
user = "galaxy"
port = 2222
key = "keys/id"
dir = "/srv/galaxy"
env = { GLOO_SOCKET_IFNAME = "eth0" }
[devices.tablet]
address = "10.0.0.2"
dir = "/data/galaxy"
'''


def test_a_hosts_file_parses_with_paths_relative_to_it(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(GOOD)
    hosts = HostsFile.load(path)
    desktop, tablet = hosts.for_plan(("desktop", "tablet"))
    assert (desktop.port, desktop.user, desktop.key, desktop.env) == (
        2222, "galaxy", tmp_path / "keys/id", (("GLOO_SOCKET_IFNAME", "eth0"),))
    assert (tablet.port, tablet.user, tablet.python) == (22, None, "python3")
    assert hosts.token_file == tmp_path / "cluster.token"
    ssh = hosts.ssh(desktop, "true")
    assert ssh[0] == "ssh" and "BatchMode=yes" in ssh and ssh[-2:] == ["galaxy@10.0.0.1", "true"]
    assert ["-p", "2222"] == ssh[ssh.index("-p"):ssh.index("-p") + 2]
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in ssh
    scp = hosts.scp(tablet, [tmp_path / "a"], "/data/galaxy/b c")
    assert scp[-1] == "10.0.0.2:'/data/galaxy/b c'/" and "-P" in scp
    assert deployed_path("/srv/galaxy", tmp_path / "bert", "0123456789abcdef") == "/srv/galaxy/bert-0123456789ab"


@pytest.mark.parametrize("text, needle", [
    ("[devices.a]\naddress = '1.2.3.4'\n", "needs dir"),
    ("[devices.a]\naddress = '1.2.3.4'\ndir = '/x'\nport = 0\n", "port must be"),
    ("[devices.a]\naddress = '1.2.3.4'\ndir = '/x'\npasword = 'x'\n", "unknown keys"),
    ("token = 'secret'\n[devices.a]\naddress = '1.2.3.4'\ndir = '/x'\n", "unknown keys"),
    ("[devices]\n", "no [devices.NAME]"),
    ("[devices.a\n", "not valid TOML"),
])
def test_hosts_file_errors_name_the_field(tmp_path, text, needle):
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(HostsFileError, match=needle.replace("[", r"\[")):
        HostsFile.load(path)


def test_a_device_of_the_plan_missing_from_the_hosts_file_is_named(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text(GOOD)
    with pytest.raises(HostsFileError, match=r"lacks \[devices.laptop\]"):
        HostsFile.load(path).for_plan(("desktop", "laptop"))
