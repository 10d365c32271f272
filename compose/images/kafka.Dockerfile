# A Kafka broker image built without a registry (scripts/images.sh kafka): Debian's Java 17 on the
# local base image, and the broker jars scripts/kafka.sh fetched from Maven Central. It reads the
# same KAFKA_* environment as the official apache/kafka image (compose/docker-compose.yml), so the
# compose file runs with either: STREAMRL_KAFKA_IMAGE=streamrl/kafka:local.
ARG STREAMRL_BASE_IMAGE=streamrl/debian:bookworm
FROM ${STREAMRL_BASE_IMAGE}

COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        openjdk-17-jre-headless ca-certificates \
    && update-ca-certificates && rm -rf /var/lib/apt/lists/*

COPY libs/ /opt/kafka/libs/
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY kafka-entrypoint.sh /opt/kafka/bin/kafka-entrypoint.sh
COPY kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
RUN chmod +x /opt/kafka/bin/*.sh && mkdir -p /var/lib/kafka/data

EXPOSE 9092
ENTRYPOINT ["/opt/kafka/bin/kafka-entrypoint.sh"]
