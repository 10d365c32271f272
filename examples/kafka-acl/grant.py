"""Grant one run's ACLs: producers write trajectories but never the weights stream.

    export STREAMRL_KAFKA_PASSWORD=admin-secret          # the operator's password
    .venv/bin/python examples/kafka-acl/grant.py RUN_ID \
        --log 'kafka://127.0.0.1:19092?security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512&sasl_username=admin'

The --log URL logs in as a principal allowed to create ACLs (a super user). See README.md.
"""

from __future__ import annotations

import argparse

from streamrl import aio
from streamrl.log import open_log
from streamrl.log.kafka import KafkaLog
from streamrl.log.kafka.acl import grant, run_acls
from streamrl.recipe.context import PRODUCER_GROUP, TRAINER_GROUP


async def main(run_id: str, log_url: str, producer: str, trainer: str) -> None:
    async with open_log(log_url) as log:
        assert isinstance(log, KafkaLog), "ACLs exist only on Kafka"
        acls = run_acls(run_id, producer=producer, trainer=trainer,
                        producer_group=PRODUCER_GROUP, trainer_group=TRAINER_GROUP)
        await grant(log.config, acls)
    for acl in acls:
        kind = acl.resource.name.lower() + (" prefix" if acl.prefixed else "")
        print(f"allow User:{acl.principal} {acl.operation.name} on {kind} {acl.name}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_id")
    p.add_argument("--log", required=True, help="kafka URL logging in as an ACL admin")
    p.add_argument("--producer", default="producer", help="SASL user of the producers")
    p.add_argument("--trainer", default="trainer", help="SASL user of the trainer")
    args = p.parse_args()
    aio.run(main(args.run_id, args.log, args.producer, args.trainer))
