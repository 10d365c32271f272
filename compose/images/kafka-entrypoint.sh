#!/bin/sh
# Start a KRaft broker from KAFKA_* environment variables, as the official apache/kafka image
# does: KAFKA_FOO_BAR=x becomes foo.bar=x (a double underscore is an underscore, a triple one a
# dash); CLUSTER_ID formats the log dirs on first start.
set -eu
props=/opt/kafka/config/server.properties
: > "$props"
env | sort | while IFS='=' read -r name value; do
    case "$name" in
        KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_*) continue ;;
        KAFKA_*) key=$(echo "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
                 echo "$key=$value" >> "$props" ;;
    esac
done
cp="/opt/kafka/libs/*"
java_opts="${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties ${KAFKA_OPTS:-}"
logs=$(sed -n 's/^log\.dirs=//p' "$props")
if [ ! -f "${logs:-/var/lib/kafka/data}/meta.properties" ]; then
    # shellcheck disable=SC2086 # java_opts is a list of options
    java $java_opts -cp "$cp" kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id="${CLUSTER_ID:?set CLUSTER_ID}" -c "$props"
fi
# shellcheck disable=SC2086
exec java $java_opts -cp "$cp" kafka.Kafka "$props"
