"""The ec2 discoverer against moto's EC2 server, compared with Prometheus 2.42.

moto hands out private 10.x and public 54.x addresses: these tests only discover (never
scrape), and the reference Prometheus drops every target before any scrape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trawl
import trio
from trawl_discovery_ec2 import EC2Config, EC2Discoverer
from trawl_discovery_ec2._discoverer import instance_labels

from tests.servers.moto import ACCESS_KEY, LINUX_AMI, SECRET_KEY, WINDOWS_AMI, MotoServer
from tests.servers.prometheus import Prometheus, comparable

pytestmark = pytest.mark.servers
ARM_AMI_FILTER = [{"Name": "architecture", "Values": ["arm64"]}]
SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def moto_module(tmp_path_factory):
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def moto(moto_module):
    moto_module.reset()
    return moto_module


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "ec2" in kinds


def test_kapacitor_section_loads_with_its_defaults():
    config = trawl.parse_config({"ec2": [{
        "enabled": False, "id": "myec2", "region": "us-east-1", "access-key": "",
        "secret-key": "", "profile": "", "refresh-interval": "1m0s", "port": 80}]}, registry())
    [(cls, c)] = config.discoverers
    assert cls is EC2Discoverer
    assert (c.id, c.region, c.access_key, c.profile, c.refresh_interval, c.port) == (
        "myec2", "us-east-1", "", "", 60.0, 80)
    d = EC2Config()
    assert (d.region, d.refresh_interval, d.port, d.endpoint, d.role_arn, d.filters,
            d.timeout) == ("us-east-1", 60.0, 80, "", "", [], 30.0)


def test_secret_key_is_a_secret():
    c = EC2Config(access_key="AKIA", secret_key=SECRET)
    assert SECRET not in repr(c)
    assert SECRET not in json.dumps(c.model_dump(mode="json", by_alias=True))


@pytest.mark.parametrize(("section", "message"), [
    ({"access-key": "AKIA"}, "access-key and secret-key"),
    ({"secret-key": SECRET}, "access-key and secret-key"),
    ({"region": ""}, "region"),
    ({"filters": [{"name": "tag:env", "values": []}]}, "values"),
    ({"filters": [{"name": "tag:env"}]}, "values"),
    ({"filters": [{"name": "tag:env", "values": ["a"], "vals": ["b"]}]}, "vals"),
    ({"timeout": "0s"}, "timeout"),
    ({"secret-keys": SECRET}, "secret-keys"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"ec2": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml" in text
    assert "ec2" in text
    assert message in text
    assert SECRET not in text


def test_labels_moto_cannot_produce():
    # moto returns no IPv6 addresses, no lifecycle, one interface: the same code on an
    # instance shaped as AWS documents DescribeInstances.
    inst = {
        "InstanceId": "i-1", "ImageId": "ami-1", "InstanceType": "c5.large",
        "PrivateIpAddress": "10.0.0.5", "PrivateDnsName": "ip-10-0-0-5.ec2.internal",
        "Placement": {"AvailabilityZone": "eu-west-2a"}, "State": {"Name": "pending"},
        "InstanceLifecycle": "spot", "Architecture": "arm64", "VpcId": "vpc-1",
        "SubnetId": "subnet-a",
        "NetworkInterfaces": [
            {"SubnetId": "subnet-a", "Ipv6Addresses": [{"Ipv6Address": "2001:db8::1"}]},
            {"SubnetId": "subnet-b", "Ipv6Addresses": [{"Ipv6Address": "2001:db8::2"},
                                                       {"Ipv6Address": "2001:db8::3"}]},
            {"SubnetId": "subnet-a", "Ipv6Addresses": []},
            {"Ipv6Addresses": [{"Ipv6Address": "2001:db8::9"}]},
        ],
        "Tags": [{"Key": "aws:autoscaling:groupName", "Value": "asg"},
                 {"Key": "Ünïcode-key", "Value": "v"}, {"Key": "novalue"}],
    }
    labels = instance_labels({"OwnerId": "42"}, inst, region="eu-west-2", port=9100,
                             az_ids={"eu-west-2a": "euw2-az2"})
    assert labels == {
        "__address__": "10.0.0.5:9100",
        "__meta_ec2_ami": "ami-1",
        "__meta_ec2_architecture": "arm64",
        "__meta_ec2_availability_zone": "eu-west-2a",
        "__meta_ec2_availability_zone_id": "euw2-az2",
        "__meta_ec2_instance_id": "i-1",
        "__meta_ec2_instance_lifecycle": "spot",
        "__meta_ec2_instance_state": "pending",
        "__meta_ec2_instance_type": "c5.large",
        "__meta_ec2_ipv6_addresses": ",2001:db8::1,2001:db8::2,2001:db8::3,",
        "__meta_ec2_owner_id": "42",
        "__meta_ec2_primary_subnet_id": "subnet-a",
        "__meta_ec2_private_dns_name": "ip-10-0-0-5.ec2.internal",
        "__meta_ec2_private_ip": "10.0.0.5",
        "__meta_ec2_region": "eu-west-2",
        "__meta_ec2_subnet_id": ",subnet-a,subnet-b,",
        "__meta_ec2_tag_aws_autoscaling_groupName": "asg",
        "__meta_ec2_tag__n_code_key": "v",
        "__meta_ec2_vpc_id": "vpc-1",
    }
    # No VPC (EC2-Classic): no subnet, VPC or IPv6 labels; no private IP: no target.
    classic = {k: v for k, v in inst.items() if k not in ("VpcId", "InstanceLifecycle")}
    labels = instance_labels({}, classic, region="r", port=80, az_ids={})
    assert labels is not None
    assert not {"__meta_ec2_vpc_id", "__meta_ec2_subnet_id", "__meta_ec2_ipv6_addresses",
                "__meta_ec2_primary_subnet_id", "__meta_ec2_owner_id"} & labels.keys()
    assert labels["__meta_ec2_availability_zone_id"] == ""
    del inst["PrivateIpAddress"]
    assert instance_labels({}, inst, region="r", port=80, az_ids={}) is None


def populate(moto: MotoServer) -> dict[str, str]:
    """Instances of every kind Prometheus labels differently; returns name → instance id."""
    ec2 = moto.client()
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24",
                               AvailabilityZone="us-east-1c")["Subnet"]["SubnetId"]
    arm_ami = ec2.describe_images(Owners=["amazon"], Filters=ARM_AMI_FILTER,
                                  MaxResults=5)["Images"][0]["ImageId"]
    ids = {}

    def run(name: str, tags: list[dict[str, str]] | None = None, **kwargs) -> str:
        spec = [{"ResourceType": "instance", "Tags": tags}] if tags else []
        kwargs.setdefault("ImageId", LINUX_AMI)
        inst = ec2.run_instances(MinCount=1, MaxCount=1, TagSpecifications=spec,
                                 **kwargs)["Instances"][0]
        ids[name] = inst["InstanceId"]
        return str(inst["InstanceId"])

    run("web", [{"Key": "Name", "Value": "web"}, {"Key": "team-x.y", "Value": "a b"},
                {"Key": "prometheus", "Value": "yes"}], InstanceType="t3.micro")
    run("windows-public", [{"Key": "prometheus", "Value": "yes"}], ImageId=WINDOWS_AMI,
        InstanceType="m5.large",
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet,
                            "AssociatePublicIpAddress": True}])
    run("private", SubnetId=subnet, InstanceType="c5.xlarge",
        Placement={"AvailabilityZone": "us-east-1c"})
    run("arm", [{"Key": "Name", "Value": "arm"}], ImageId=arm_ami, InstanceType="t4g.small",
        SubnetId=subnet)
    stopped = run("stopped", [{"Key": "Name", "Value": "stopped"}])
    ec2.stop_instances(InstanceIds=[stopped])
    terminated = run("terminated")
    ec2.terminate_instances(InstanceIds=[terminated])
    return ids


def discover_once(tmp_path: Path, text: str) -> tuple[list[dict], str]:
    path = tmp_path / "trawl.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "trawl", "discover", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def by_instance(labels: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {x["__meta_ec2_instance_id"]: x for x in labels}


def test_same_answers_as_prometheus(moto, tmp_path):
    ids = populate(moto)
    base = {"endpoint": moto.url, "region": "us-east-1", "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY, "refresh_interval": "1s", "port": 9100}
    filtered = {**base, "filters": [{"name": "tag:prometheus", "values": ["yes"]},
                                    {"name": "instance-state-name", "values": ["running"]}]}
    with Prometheus(tmp_path / "prom", [
        {"job_name": "all", "ec2_sd_configs": [base]},
        {"job_name": "filtered", "ec2_sd_configs": [filtered]},
    ]) as prometheus:
        lines, stderr = discover_once(tmp_path, f"""
[[ec2]]
  id = "all"
  endpoint = "{moto.url}"
  access-key = "{ACCESS_KEY}"
  secret-key = "{SECRET_KEY}"
  port = 9100
[[ec2]]
  id = "filtered"
  endpoint = "{moto.url}"
  access-key = "{ACCESS_KEY}"
  secret-key = "{SECRET_KEY}"
  port = 9100
  filters = [{{name = "tag:prometheus", values = ["yes"]}},
             {{name = "instance-state-name", values = ["running"]}}]
""")
        theirs_all = by_instance([comparable(x)
                                  for x in prometheus.wait_discovered("all", len(ids))])
        theirs_filtered = by_instance([comparable(x)
                                       for x in prometheus.wait_discovered("filtered", 2)])
    assert stderr.count("warning") == 0, stderr
    ours_all = by_instance([x["labels"] for x in lines if x["discoverer"] == "ec2/all"])
    ours_filtered = by_instance([x["labels"] for x in lines
                                 if x["discoverer"] == "ec2/filtered"])
    assert {x["source"] for x in lines} == {"us-east-1"}
    assert sorted(ours_all) == sorted(ids.values())
    assert sorted(ours_filtered) == sorted([ids["web"], ids["windows-public"]])
    for instance_id, theirs in theirs_all.items():
        assert ours_all[instance_id] == theirs, instance_id
    assert ours_all == theirs_all
    assert ours_filtered == theirs_filtered
    # The instances really differ in the ways Prometheus labels.
    web, win = ours_all[ids["web"]], ours_all[ids["windows-public"]]
    assert web["__meta_ec2_tag_team_x_y"] == "a b"
    assert win["__meta_ec2_platform"] == "windows"
    assert "__meta_ec2_public_ip" in win
    assert "__meta_ec2_public_ip" not in ours_all[ids["private"]]
    assert ours_all[ids["arm"]]["__meta_ec2_architecture"] == "arm64"
    assert ours_all[ids["stopped"]]["__meta_ec2_instance_state"] == "stopped"
    assert ours_all[ids["private"]]["__meta_ec2_availability_zone_id"] == "use1-az2"


@asynccontextmanager
async def running(config: EC2Config) -> AsyncIterator[tuple[EC2Discoverer,
                                                            trawl.DiscoveryManager]]:
    discoverer = EC2Discoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def instances(manager: trawl.DiscoveryManager, name: str = "ec2/t") -> dict[str, dict]:
    return {t.labels["__meta_ec2_instance_id"]: t.labels for t in manager.snapshot(name)}


async def eventually(check: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``check`` (the discoverer changes state from its own task) until it is true."""
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.05)


def config_for(moto: MotoServer, **extra) -> EC2Config:
    return EC2Config(id="t", endpoint=moto.url, access_key=ACCESS_KEY, secret_key=SECRET,
                     refresh_interval=0.3, port=9100, timeout=5.0, **extra)


async def test_instances_started_tagged_and_terminated_between_refreshes(moto):
    ec2 = moto.client()

    def start(count: int) -> list[str]:
        out = ec2.run_instances(ImageId=LINUX_AMI, MinCount=count, MaxCount=count)
        return [i["InstanceId"] for i in out["Instances"]]

    async with running(config_for(moto)) as (discoverer, manager):
        assert instances(manager) == {}
        assert not discoverer.health.failing
        a, b = await trio.to_thread.run_sync(start, 2)
        await eventually(lambda: set(instances(manager)) == {a, b})
        await trio.to_thread.run_sync(lambda: ec2.create_tags(
            Resources=[a], Tags=[{"Key": "env", "Value": "prod"}]))
        await eventually(lambda: instances(manager)[a].get("__meta_ec2_tag_env") == "prod")
        assert "__meta_ec2_tag_env" not in instances(manager)[b]
        await trio.to_thread.run_sync(lambda: ec2.terminate_instances(InstanceIds=[b]))
        await eventually(
            lambda: instances(manager)[b]["__meta_ec2_instance_state"] == "terminated")
        # moto keeps terminated instances in its answers, as AWS does for about an hour.
        await trio.to_thread.run_sync(lambda: ec2.create_tags(
            Resources=[a], Tags=[{"Key": "env", "Value": "staging"}]))
        await eventually(lambda: instances(manager)[a]["__meta_ec2_tag_env"] == "staging")
        assert discoverer.health.targets == 2
        assert not discoverer.health.failing


async def test_filters_and_role_arn(moto):
    ec2 = moto.client()
    tagged = await trio.to_thread.run_sync(lambda: ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1, TagSpecifications=[{
            "ResourceType": "instance", "Tags": [{"Key": "scrape", "Value": "yes"}]}]))
    await trio.to_thread.run_sync(lambda: ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1))
    config = config_for(moto, role_arn="arn:aws:iam::123456789012:role/trawl-discovery",
                        filters=[{"name": "tag:scrape", "values": ["yes"]}])
    async with running(config) as (discoverer, manager):
        assert not discoverer.health.failing, discoverer.health.last_error
        assert set(instances(manager)) == {tagged["Instances"][0]["InstanceId"]}
        # The EC2 calls were signed with the temporary credentials STS handed out.
        credentials = discoverer._client._get_credentials()
        assert credentials.access_key.startswith("ASIA")
        assert credentials.token


async def test_unreachable_endpoint_keeps_targets_and_recovers(tmp_path, caplog):
    with MotoServer(tmp_path / "moto") as moto:
        ec2 = moto.client()
        first = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1)
        first_id = first["Instances"][0]["InstanceId"]
        async with running(config_for(moto)) as (discoverer, manager):
            assert set(instances(manager)) == {first_id}
            await trio.to_thread.run_sync(moto.stop)
            await eventually(lambda: discoverer.health.failing)
            failures = discoverer.health.failures
            await eventually(lambda: discoverer.health.failures >= failures + 1)  # retries
            error = discoverer.health.last_error
            assert "could not describe instances" in error
            assert moto.url in error
            assert SECRET not in error
            assert set(instances(manager)) == {first_id}      # the last good targets stay
            # moto comes back on the same port, empty: a new instance is all there is.
            await trio.to_thread.run_sync(moto.start)
            second = await trio.to_thread.run_sync(lambda: moto.client().run_instances(
                ImageId=LINUX_AMI, MinCount=1, MaxCount=1))
            second_id = second["Instances"][0]["InstanceId"]
            await eventually(lambda: set(instances(manager)) == {second_id}, within=30)
            assert not discoverer.health.failing
    logged = [r.getMessage() for r in caplog.records if r.name == "trawl.discovery"]
    assert any(m.startswith("discoverer ec2/t failed: could not describe instances")
               for m in logged)
    assert "discoverer ec2/t recovered" in logged
    assert not any(SECRET in r.getMessage() for r in caplog.records)


async def test_garbage_answers_are_an_error():
    # The garbage server runs on the same Trio loop as the discoverer: had boto3 blocked
    # the loop, it could never answer, and the error would be a read timeout instead.
    async def garbage(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n"
                                  b"Content-Length: 15\r\nConnection: close\r\n\r\n"
                                  b"<not>ec2</oops>")
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        config = EC2Config(id="t", endpoint=f"http://127.0.0.1:{port}", access_key="a",
                           secret_key=SECRET, refresh_interval=10, timeout=2.0)
        async with running(config) as (discoverer, manager):
            assert discoverer.health.failing
            assert "could not describe instances" in discoverer.health.last_error
            assert "invalid XML received" in discoverer.health.last_error
            assert SECRET not in discoverer.health.last_error
            assert manager.snapshot("ec2/t") == []
        nursery.cancel_scope.cancel()


async def test_credential_chain_profile_and_environment(moto, tmp_path, monkeypatch):
    # boto3's chain: no keys in the section, so the environment or a profile supplies them.
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[trawltest]\naws_access_key_id = {ACCESS_KEY}\n"
                           f"aws_secret_access_key = {SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    ec2 = moto.client()
    await trio.to_thread.run_sync(lambda: ec2.run_instances(
        ImageId=LINUX_AMI, MinCount=1, MaxCount=1))
    base = {"id": "t", "endpoint": moto.url, "refresh_interval": 10.0}

    async with running(EC2Config(**base, profile="trawltest")) as (discoverer, manager):
        assert not discoverer.health.failing, discoverer.health.last_error
        assert len(instances(manager)) == 1
        assert discoverer._client._get_credentials().access_key == ACCESS_KEY

    async with running(EC2Config(**base, profile="nosuch")) as (discoverer, manager):
        assert discoverer.health.failing
        assert "nosuch" in discoverer.health.last_error
        assert instances(manager) == {}

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    async with running(EC2Config(**base)) as (discoverer, manager):
        assert not discoverer.health.failing, discoverer.health.last_error
        assert len(instances(manager)) == 1
        assert discoverer._client._get_credentials().access_key == "AKIAFROMENVIRONMENT"
