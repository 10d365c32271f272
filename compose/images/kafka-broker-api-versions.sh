#!/bin/sh
# The official image's readiness probe, at the same path (compose/docker-compose.yml healthcheck).
exec java -Xmx128m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp "/opt/kafka/libs/*" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
