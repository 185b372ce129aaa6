"""A single-node Apache Kafka 4 broker in KRaft mode, fetched from Maven Central.

No Docker engine runs on our machines, so the broker runs straight from the
jars that ``driftline/stack/kafka-pom.xml`` names. The jars are cached under the
state directory; storage is formatted once; the broker's pid and log live
next to its data so that ``stack down`` and ``stack status`` find them later.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from driftline.stack.process import (
    ManagedProcess,
    StackError,
    free_port,
    port_answers,
    port_free,
    tail,
    wait_until,
)

# package data: the pom travels inside the wheel, next to this module
POM = Path(__file__).resolve().with_name("kafka-pom.xml")

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.started.name = kafka.server.BrokerServer
logger.started.level = INFO
"""


def require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(
            f"{name} is not installed; it is needed to {purpose}. "
            f"On Debian: apt-get install -y {'openjdk-17-jre-headless' if name == 'java' else 'maven'}"
        )
    return path


def fetch_jars(cache_dir: Path, pom: Path = POM) -> Path:
    """Download the broker's jars once; later calls reuse the cache."""
    # absolute: Maven resolves a relative outputDirectory against the pom's folder, not ours
    libs = cache_dir.resolve() / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = require_tool("mvn", "fetch the Kafka jars from Maven Central")
    require_tool("java", "run the Kafka broker")
    libs.mkdir(parents=True, exist_ok=True)
    print(f"fetching Apache Kafka jars with Maven into {libs} ...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise StackError(f"Maven could not fetch the Kafka jars:\n{(result.stdout + result.stderr)[-3000:]}")
    marker.write_text("ok\n")
    return libs


@dataclass
class KafkaBroker:
    """A local broker: ``start()`` formats storage once and waits for the Admin API.

    >>> b = KafkaBroker(Path("/tmp/dl-kafka-doc"), port=19092)
    >>> b.bootstrap
    '127.0.0.1:19092'
    """

    home: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int | None = None
    heap: str = "512m"
    jars: Path | None = None  # default: <home>/../kafka-jars; DRIFTLINE_KAFKA_JARS overrides

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.home / "broker.pid", self.home / "broker.log")

    def _controller(self) -> int:
        # The controller listener is internal: next to the broker port when that is free, else any free port
        # (an ephemeral client connection may hold port + 1, and Kafka would die on the bind).
        if self.controller_port is not None:
            return self.controller_port
        return self.port + 1 if port_free(self.host, self.port + 1) else free_port(self.host)

    def _properties(self) -> Path:
        controller = self._controller()
        data = self.home / "data"
        props = self.home / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{controller}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{controller}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # tests create many short-lived groups; a new group should not wait 3 s to balance
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )
        return props

    def start(self, timeout: float = 90.0) -> None:
        if port_answers(self.host, self.port):
            raise StackError(f"port {self.host}:{self.port} is already taken by another process")
        self.home.mkdir(parents=True, exist_ok=True)
        libs = fetch_jars(self.jars or Path(os.environ.get("DRIFTLINE_KAFKA_JARS") or self.home.parent / "kafka-jars"))
        java = require_tool("java", "run the Kafka broker")
        props = self._properties()
        classpath = f"{libs}/*"
        if not (self.home / "data" / "meta.properties").exists():
            # a Kafka cluster id is a url-safe base64 uuid; one that starts with "-" must not read as a flag
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                [java, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(props)],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{(fmt.stdout + fmt.stderr)[-2000:]}")
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.home / "server.log"))
        self.process.spawn(
            [
                java,
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ]
        )
        try:
            wait_until(lambda: self.admin_answers(), timeout, self.process, f"Kafka on {self.bootstrap}")
        except StackError as exc:
            # the broker's own log (log4j) says why, e.g. a port taken; its stdout is often empty
            raise StackError(
                f"{exc}\nlast lines of {self.home / 'server.log'}:\n{tail(self.home / 'server.log')}"
            ) from None

    def admin_answers(self) -> bool:
        return admin_answers(self.bootstrap)

    def stop(self, timeout: float = 30.0) -> bool:
        return self.process.stop(timeout)


def first_broker(bootstrap: str) -> tuple[str, int]:
    """Host and port of the first address in a bootstrap list (the host is empty when not given).

    >>> first_broker("kafka-1:9093,kafka-2:9093"), first_broker(":9092")
    (('kafka-1', 9093), ('', 9092))
    """
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host, int(port)


def admin_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker at ``bootstrap`` serves metadata through the Admin API."""
    if not port_answers(*first_broker(bootstrap)):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(md.brokers)
