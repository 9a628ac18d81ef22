"""Fast checks of the Ansible provisioning in ansible/: lint (production profile), syntax,
the inventory, and a check-mode run of the whole site that renders every template.

The slow convergence tests (a real mmdebstrap root through the chroot connection, the
control node in a network namespace answering DHCP and TFTP) are in
tests/test_provisioning_slow.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
PLAYBOOKS = ["site.yml", "control.yml", "fileservers.yml", "node-image.yml"]
COLLECTIONS = ANSIBLE_DIR / "collections" / "ansible_collections"


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env.pop("NO_COLOR", None)
    return env


def ansible(
    tool: str, *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run an ansible command line tool from the venv in ansible/."""
    result = subprocess.run(
        [str(VENV_BIN / tool), *args],
        cwd=ANSIBLE_DIR,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
    return result


def recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counters of a PLAY RECAP: {'host': {'ok': 3, 'changed': 0, ...}}."""
    hosts: dict[str, dict[str, int]] = {}
    section = output.rsplit("PLAY RECAP", 1)
    if len(section) != 2:
        raise AssertionError(f"no PLAY RECAP in output:\n{output[-3000:]}")
    for line in section[1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


@pytest.fixture(scope="session", autouse=True)
def collections_installed() -> None:
    if not (COLLECTIONS / "community/general/MANIFEST.json").exists():
        subprocess.run(
            [str(ANSIBLE_DIR / "install-collections.sh"), str(VENV_BIN / "pip")],
            check=True,
            timeout=300,
        )


def test_recap_parser() -> None:
    out = "PLAY RECAP ***\nh1 : ok=3    changed=1    unreachable=0    failed=0\n"
    assert recap(out) == {"h1": {"ok": 3, "changed": 1, "unreachable": 0, "failed": 0}}
    with pytest.raises(AssertionError, match="no PLAY RECAP"):
        recap("nothing")


def test_ansible_lint_production_profile() -> None:
    result = ansible("ansible-lint", "--profile", "production", "--nocolor", timeout=600)
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook: str) -> None:
    ansible("ansible-playbook", "--syntax-check", playbook)


def test_inventory_groups_and_node_reservations() -> None:
    inv = json.loads(ansible("ansible-inventory", "--list").stdout)
    assert inv["control"]["hosts"] == ["heinzelfrau"]
    assert sorted(inv["fileservers"]["hosts"]) == ["homer4a", "homer4b"]
    nodes = inv["nodes"]["hosts"]
    assert nodes == [f"h{i:03d}" for i in range(1, 25)]
    hostvars = inv["_meta"]["hostvars"]
    reservations = hostvars["h001"]["cluster_nodes"]
    assert sorted(reservations) == nodes
    macs = [reservations[n]["mac"] for n in nodes]
    ips = [reservations[n]["ip"] for n in nodes]
    assert len(set(macs)) == len(macs) == len(set(ips)) == 24
    assert all(re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", m) for m in macs)
    assert hostvars["nodeimage"]["ansible_connection"] == "community.general.chroot"


def test_site_check_mode_renders_every_template(tmp_path: Path) -> None:
    """A check-mode run of the whole site on this machine (nothing is written): every
    template renders from the inventory, every assertion holds. Package installation,
    SSDs, services and publishing need an installed host and are left out here; the slow
    tests run check mode on converged hosts. The configuration files are pointed at
    existing directories, as they would exist after installation."""
    for d in ("dnsmasq.d", "tftp", "dadafs", "exports.d", "initramfs-tools"):
        (tmp_path / d).mkdir()
    paths = {
        "netboot_conf_file": f"{tmp_path}/dnsmasq.d/dadafs.conf",
        "cluster_tftp_root": f"{tmp_path}/tftp",
        "nfsroot_kernel_exports_file": f"{tmp_path}/exports.d/nodeimage.exports",
        "dadafs_origin_config_file": f"{tmp_path}/dadafs/dadafsd.toml",
        "dadafs_proxy_config_file": f"{tmp_path}/dadafs/dadafsp.toml",
        "dadafs_client_config_file": f"{tmp_path}/dadafs/client.toml",
        "dada_scheduler_env_file": f"{tmp_path}/dada-scheduler",
        "dada_worker_env_file": f"{tmp_path}/dada-worker",
        "node_root_initramfs_dir": f"{tmp_path}/initramfs-tools",
    }
    (tmp_path / "vars.json").write_text(json.dumps(paths))
    result = ansible(
        "ansible-playbook",
        "site.yml",
        "--check",
        "--diff",
        "--skip-tags",
        "install,storage,service,publish",
        "-e",
        "ansible_connection=local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"@{tmp_path}/vars.json",
        timeout=300,
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["dnsmasq.d", "tftp", "dadafs", "exports.d", "initramfs-tools", "vars.json"]
    ), "check mode wrote files"
    hosts = recap(result.stdout)
    assert set(hosts) == {"heinzelfrau", "homer4a", "homer4b", "nodeimage"}
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in hosts.values())
    out = result.stdout
    # dnsmasq: a reservation per node, DNS names, the PXE chain.
    assert "dhcp-host=52:54:00:da:da:01,h001,10.42.0.101," in out
    assert "dhcp-host=52:54:00:da:da:18,h024,10.42.0.124," in out
    assert "host-record=homer4a.cluster.dadafs,homer4a,10.42.0.11" in out
    assert "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe" in out
    assert "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi" in out
    # iPXE: the NFS-root command line.
    assert re.search(
        r"root=/dev/nfs nfsroot=10\.42\.0\.1:/srv/nodeimage/root\S* ip=dhcp ro", out
    ), "boot.ipxe lacks the NFS-root command line"
    # The daemons' configurations, from group_vars.
    assert 'upstream = "homer4a:7070;homer4b:7070"' in out
    assert 'upstream = "heinzelfrau:7071"' in out
    assert 'p10 = "/gpfs/p10"' in out
    assert "DADA_SCHEDULER=tcp://heinzelfrau:8786" in out
    assert "BOOT=nfs" in out and "MODULES=netboot" in out


def test_result_cache_directory_is_the_one_dada_stxm_uses() -> None:
    """The control role creates the directory ``dada stxm`` looks for by default."""
    import yaml

    from workers.resultcache import DEFAULT_DIR

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles/dada_scheduler/defaults/main.yml").read_text())
    assert defaults["dada_scheduler_result_cache"] == DEFAULT_DIR
