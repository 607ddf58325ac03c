from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
import trawl
import trio
from pydantic import Field, SecretStr, model_validator

log = logging.getLogger("trawl.discovery.ec2")

PREFIX = "__meta_ec2_"
SEPARATOR = ","
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
# Errors after which Prometheus builds its client again (credentials may have changed).
_AUTH_ERRORS = frozenset(("AuthFailure", "UnauthorizedOperation", "ExpiredToken",
                          "RequestExpired", "InvalidClientTokenId"))
# Temporary credentials from role-arn are renewed this long before they expire.
_RENEW_BEFORE = datetime.timedelta(minutes=5)


class EC2Filter(trawl.SectionModel):
    """One ``DescribeInstances`` filter, e.g. ``{name = "tag:env", values = ["prod"]}``."""

    name: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)


class EC2Config(trawl.DiscovererConfig):
    """``[[ec2]]``: Kapacitor's keys plus ``endpoint``, ``role-arn``, ``filters``, ``timeout``."""

    region: str = Field("us-east-1", min_length=1)
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    profile: str = ""
    refresh_interval: trawl.Duration = 60.0
    port: int = Field(80, ge=0, le=65535)
    endpoint: str = ""
    role_arn: str = ""
    filters: list[EC2Filter] = Field(default_factory=list)
    timeout: trawl.Duration = 30.0

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> EC2Config:
        if bool(self.access_key) != bool(self.secret_key.get_secret_value()):
            raise ValueError("access-key and secret-key: give both, or neither to use the "
                             "AWS credential chain (environment, profile, instance role)")
        if self.timeout <= 0:
            raise ValueError("timeout: must be positive")
        return self


def sanitize_label_name(name: str) -> str:
    """Prometheus's ``strutil.SanitizeLabelName``: every other character becomes ``_``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def instance_labels(reservation: Mapping[str, Any], inst: Mapping[str, Any], *, region: str,
                    port: int, az_ids: Mapping[str, str]) -> dict[str, str] | None:
    """The labels of one instance, exactly as Prometheus 2.42's ``discovery/aws/ec2.go``.

    Returns None for an instance without a private IP address (not yet placed, or gone).
    """
    private_ip = inst.get("PrivateIpAddress")
    if not private_ip:
        return None
    labels = {PREFIX + "instance_id": inst["InstanceId"], PREFIX + "region": region}
    if reservation.get("OwnerId") is not None:
        labels[PREFIX + "owner_id"] = reservation["OwnerId"]
    labels[PREFIX + "private_ip"] = private_ip
    if inst.get("PrivateDnsName") is not None:
        labels[PREFIX + "private_dns_name"] = inst["PrivateDnsName"]
    labels["__address__"] = join_host_port(private_ip, port)
    if inst.get("Platform"):
        labels[PREFIX + "platform"] = inst["Platform"]
    if inst.get("PublicIpAddress") is not None:
        labels[PREFIX + "public_ip"] = inst["PublicIpAddress"]
        labels[PREFIX + "public_dns_name"] = inst.get("PublicDnsName", "")
    labels[PREFIX + "ami"] = inst.get("ImageId", "")
    az = inst.get("Placement", {}).get("AvailabilityZone", "")
    labels[PREFIX + "availability_zone"] = az
    labels[PREFIX + "availability_zone_id"] = az_ids.get(az, "")
    labels[PREFIX + "instance_state"] = inst.get("State", {}).get("Name", "")
    labels[PREFIX + "instance_type"] = inst.get("InstanceType", "")
    if inst.get("InstanceLifecycle"):
        labels[PREFIX + "instance_lifecycle"] = inst["InstanceLifecycle"]
    if inst.get("Architecture"):
        labels[PREFIX + "architecture"] = inst["Architecture"]
    if inst.get("VpcId") is not None:
        labels[PREFIX + "vpc_id"] = inst["VpcId"]
        labels[PREFIX + "primary_subnet_id"] = inst.get("SubnetId", "")
        subnets: list[str] = []
        ipv6: list[str] = []
        for eni in inst.get("NetworkInterfaces", []):
            subnet = eni.get("SubnetId")
            if subnet is None:
                continue
            if subnet not in subnets:
                subnets.append(subnet)
            ipv6.extend(a["Ipv6Address"] for a in eni.get("Ipv6Addresses", [])
                        if "Ipv6Address" in a)
        labels[PREFIX + "subnet_id"] = SEPARATOR + SEPARATOR.join(subnets) + SEPARATOR
        if ipv6:
            labels[PREFIX + "ipv6_addresses"] = SEPARATOR + SEPARATOR.join(ipv6) + SEPARATOR
    for tag in inst.get("Tags", []):
        if tag.get("Key") is None or tag.get("Value") is None:
            continue
        labels[PREFIX + "tag_" + sanitize_label_name(tag["Key"])] = tag["Value"]
    return labels


class EC2Discoverer(trawl.RefreshDiscoverer):
    """Lists the instances of one region every ``refresh-interval``, as Prometheus's ``ec2_sd``.

    boto3 is blocking: every AWS call runs in a worker thread (one at a time per
    discoverer), under botocore's connect and read timeouts and a Trio deadline.
    """

    kind = "ec2"
    Config = EC2Config
    config: EC2Config

    def __init__(self, config: EC2Config) -> None:
        super().__init__(config)
        self._limiter = trio.CapacityLimiter(1)
        self._client: Any = None
        self._expires: datetime.datetime | None = None
        self._az_ids: dict[str, str] | None = None

    async def aclose(self) -> None:
        self._drop_client()

    def _drop_client(self) -> None:
        """Close the client's connection pool (it is built again when needed)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def refresh(self) -> list[trawl.TargetGroup]:
        # A refresh runs in a worker thread; if it outlives the deadline it is abandoned
        # (botocore's own timeouts end it) and the limiter keeps the next one waiting.
        with trio.fail_after(self.config.timeout * 2 + 10):
            targets = await trio.to_thread.run_sync(
                self._refresh_blocking, limiter=self._limiter, abandon_on_cancel=True)
        return [trawl.group(self.config.region, tuple(targets))]

    # ---------------------------------------------------------------- worker thread only

    def _refresh_blocking(self) -> list[dict[str, str]]:
        try:
            return self._describe()
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _AUTH_ERRORS:
                self._drop_client()
            raise EC2Error(f"could not describe instances: {exc}") from None
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError,
                ValueError) as exc:
            raise EC2Error(f"could not describe instances: {exc}") from None

    def _describe(self) -> list[dict[str, str]]:
        client = self._ec2_client()
        if self._az_ids is None:
            try:
                zones = client.describe_availability_zones()["AvailabilityZones"]
                self._az_ids = {z["ZoneName"]: z["ZoneId"] for z in zones}
            except botocore.exceptions.ClientError as exc:
                # Without ec2:DescribeAvailabilityZones the AZ id label stays empty.
                log.debug("ec2/%s: could not describe availability zones: %s",
                          self.config.id, exc)
        filters = [{"Name": f.name, "Values": list(f.values)} for f in self.config.filters]
        targets = []
        paginator = client.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    labels = instance_labels(reservation, inst, region=self.config.region,
                                             port=self.config.port, az_ids=self._az_ids or {})
                    if labels is not None:
                        targets.append(labels)
        targets.sort(key=lambda t: t[PREFIX + "instance_id"])
        return targets

    def _ec2_client(self) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        if self._client is not None and (self._expires is None
                                         or now < self._expires - _RENEW_BEFORE):
            return self._client
        self._drop_client()
        c = self.config
        secret = c.secret_key.get_secret_value()
        session = boto3.session.Session(
            aws_access_key_id=c.access_key or None,
            aws_secret_access_key=secret or None,
            profile_name=c.profile or None,
            region_name=c.region,
        )
        client_config = botocore.config.Config(
            connect_timeout=min(5.0, c.timeout), read_timeout=c.timeout,
            retries={"mode": "standard", "max_attempts": 2},
            user_agent_extra="trawl-discovery-ec2",
        )
        endpoint = c.endpoint or None
        credentials: dict[str, str] = {}
        self._expires = None
        if c.role_arn:
            # As Prometheus: the STS call goes to the same session (and endpoint).
            sts = session.client("sts", endpoint_url=endpoint, config=client_config)
            answer = sts.assume_role(RoleArn=c.role_arn, RoleSessionName="trawl")["Credentials"]
            credentials = {"aws_access_key_id": answer["AccessKeyId"],
                           "aws_secret_access_key": answer["SecretAccessKey"],
                           "aws_session_token": answer["SessionToken"]}
            self._expires = answer["Expiration"]
        self._client = session.client("ec2", endpoint_url=endpoint, config=client_config,
                                      **credentials)
        return self._client


class EC2Error(trawl.TrawlError):
    """The EC2 API could not be asked, or refused."""
