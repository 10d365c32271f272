"""The Apache Kafka backend of the log, through aiokafka (`kafka://host:9092[,host2]`).

    log.py       KafkaLog: how the `Log` contract maps onto Kafka
    config.py    KafkaLogConfig: the log's options and the client settings derived from them
    options.py   extra client options, the durability guard, the TLS context
    tls.py       why a TLS handshake with a broker fails, in words
    admin.py     cluster-side calls: topics (streams) and consumer-group offsets
    reader.py    one positioned read_committed consumer per partition
    txn.py       the writer's transactional producer: records and offsets committed atomically
    dedup.py     settling a transaction whose commit went unanswered
    acl.py       the ACLs one run's roles need
"""

from streamrl.log.kafka.log import (
    KafkaLog,
    KafkaLogConfig,
    NotAuthenticatedError,
    NotAuthorizedError,
    TransactionOutcomeUnknownError,
    WriterFencedError,
)
from streamrl.log.kafka.tls import KafkaTLSError

__all__ = ["KafkaLog", "KafkaLogConfig", "KafkaTLSError", "NotAuthenticatedError",
           "NotAuthorizedError", "TransactionOutcomeUnknownError", "WriterFencedError"]
